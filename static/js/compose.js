// The compose page: Squire editor, address chips, autosave with a localStorage safety copy,
// attachments and inline images, send with undo, schedule send, right-to-left paragraphs.
// Loaded only by templates/compose/page.html; no inline scripts (CSP script-src 'self').
(function () {
  "use strict";

  var form = document.getElementById("compose-form");
  if (!form || !window.ThreadlineEditor) return;

  var token = form.querySelector("input[name=csrf_token]").value;
  var statusLine = document.getElementById("compose-status");
  var errorBox = document.getElementById("compose-error");
  var source = document.getElementById("compose-body");
  var editorRoot = document.getElementById("compose-editor");
  var SAVE_EVERY_MS = 3000;
  var EMAIL = /^[^@\s]+@[^@\s.]+(\.[^@\s.]+)*$/;
  // Arabic, Hebrew, Syriac, Thaana, N'Ko... and their presentation forms; Latin-ish is LTR.
  var RTL_CHAR = /[\u0590-\u08FF\uFB1D-\uFDFF\uFE70-\uFEFF]/;
  var LTR_CHAR = /[A-Za-z\u00C0-\u024F\u0370-\u03FF\u0400-\u04FF\u0900-\u0DFF\u3040-\u9FFF]/;

  var state = {
    draftId: form.getAttribute("data-draft-id") || "",
    saveUrl: form.getAttribute("data-save-url") || "",
    sendUrl: form.getAttribute("data-send-url") || "",
    previewUrl: form.getAttribute("data-preview-url") || "",
    undoUrl: form.getAttribute("data-undo-url") || "",
    uploadUrl: form.getAttribute("data-upload-url") || "",
    changes: 0,      // edits made so far
    savedChanges: 0, // edits the server has confirmed
    saving: null,    // the running save (a Promise)
    sessionLost: false,
    sending: false,
  };

  // ------------------------------------------------------------------ editor

  var toolbar = form.querySelector(".compose-toolbar");
  var imageInput = document.getElementById("compose-image-input");
  var editor = window.ThreadlineEditor.create({
    root: editorRoot,
    source: source,
    toolbar: toolbar,
    imageInput: imageInput,
    onImage: insertImage,
  });

  // ------------------------------------------------------------------ right-to-left

  function firstStrong(text) {
    for (var i = 0; i < text.length; i += 1) {
      var ch = text.charAt(i);
      if (RTL_CHAR.test(ch)) return "rtl";
      if (LTR_CHAR.test(ch)) return "ltr";
    }
    return null;
  }

  // Each paragraph (block) takes the direction of its first strong character, as it is typed.
  function updateDirections() {
    var blocks = editorRoot.querySelectorAll("div, p, li, h1, h2, h3, h4, h5, h6");
    for (var i = 0; i < blocks.length; i += 1) {
      var block = blocks[i];
      if (block.querySelector("div, p, li, ul, ol, blockquote")) continue; // a container
      if (block.closest("blockquote[type=cite]")) continue; // the quoted original keeps its own
      var direction = firstStrong(block.textContent || "");
      if (direction === "rtl" && block.getAttribute("dir") !== "rtl") block.setAttribute("dir", "rtl");
      else if (direction === "ltr" && block.hasAttribute("dir")) block.removeAttribute("dir");
    }
  }

  if (window.ThreadlineSmartFields) {
    window.ThreadlineSmartFields.attach({
      editor: editor,
      toolbar: toolbar,
      subject: form.elements.subject,
      preview: {
        container: form.querySelector(".compose-actions"),
        // Preview shows the saved draft: save what is typed first.
        url: function () {
          commitChips();
          return ensureDraft()
            .then(function (ok) { return ok && save(); })
            .then(function (ok) { return ok ? state.previewUrl : null; });
        },
      },
    });
  }

  // The quoted original starts folded away, as mail programs show it.
  var quoteToggle = form.querySelector(".compose-quote-toggle");
  function refreshQuoteToggle() {
    quoteToggle.hidden = !editorRoot.querySelector("blockquote[type=cite]");
  }
  quoteToggle.addEventListener("click", function () {
    var collapsed = editorRoot.classList.toggle("quote-collapsed");
    quoteToggle.setAttribute("aria-expanded", collapsed ? "false" : "true");
    quoteToggle.textContent = collapsed ? "Show quoted text" : "Hide quoted text";
  });
  refreshQuoteToggle();

  // ------------------------------------------------------------------ address chips

  function splitAddresses(text) {
    var items = [], current = "", quoted = false, angle = false;
    for (var i = 0; i < text.length; i += 1) {
      var ch = text.charAt(i);
      if (ch === '"') quoted = !quoted;
      else if (ch === "<" && !quoted) angle = true;
      else if (ch === ">" && !quoted) angle = false;
      if (",;\n\r".indexOf(ch) !== -1 && !quoted && !angle) {
        items.push(current);
        current = "";
      } else {
        current += ch;
      }
    }
    items.push(current);
    return items.map(function (item) { return item.trim(); }).filter(Boolean).map(parseAddress);
  }

  function parseAddress(item) {
    var match = /^(.*?)<([^<>]*)>\s*$/.exec(item);
    var name = match ? match[1].trim() : "";
    var address = (match ? match[2] : item).trim().replace(/^mailto:/i, "");
    if (name.length >= 2 && name.charAt(0) === '"' && name.charAt(name.length - 1) === '"') {
      name = name.slice(1, -1).replace(/\\(.)/g, "$1");
    }
    return { name: name.replace(/\s+/g, " "), address: address.toLowerCase() };
  }

  function formatAddress(pair) {
    if (!pair.name) return pair.address;
    var name = pair.name;
    if (/[()<>\[\]:;@\\,."]/.test(name)) name = '"' + name.replace(/[\\"]/g, "\\$&") + '"';
    return name + " <" + pair.address + ">";
  }

  function ChipField(row) {
    this.row = row;
    this.name = row.getAttribute("data-chips");
    this.list = row.querySelector(".chip-list");
    this.entry = row.querySelector(".chip-entry");
    this.value = row.querySelector(".chip-value");
    this.menu = row.querySelector(".chip-suggestions");
    this.error = row.querySelector("[data-error-for]");
    this.pairs = splitAddresses(this.value.value);
    this.value.type = "hidden";
    this.active = -1;
    this.suggestions = [];
    this.render();
    this.bind();
  }
  ChipField.prototype.render = function () {
    var self = this;
    this.list.textContent = "";
    var bad = [];
    this.pairs.forEach(function (pair, index) {
      var item = document.createElement("li");
      var valid = EMAIL.test(pair.address);
      item.className = "addr-chip" + (valid ? "" : " addr-chip-invalid");
      item.title = valid ? pair.address : "Not a valid address: " + pair.address;
      var label = document.createElement("span");
      label.textContent = pair.name ? pair.name + " <" + pair.address + ">" : pair.address;
      label.setAttribute("dir", "auto");
      var remove = document.createElement("button");
      remove.type = "button";
      remove.className = "chip-remove";
      remove.textContent = "×";
      remove.setAttribute("aria-label", "Remove " + (pair.name || pair.address));
      remove.addEventListener("click", function () {
        self.pairs.splice(index, 1);
        self.render();
        self.entry.focus();
        changed();
      });
      item.appendChild(label);
      item.appendChild(remove);
      if (!valid) bad.push(pair.address);
      self.list.appendChild(item);
    });
    this.value.value = this.pairs.map(formatAddress).join(", ");
    this.error.hidden = bad.length === 0;
    this.error.textContent = bad.length ? "Not a valid address: " + bad.join(", ") : "";
    this.entry.setAttribute("aria-invalid", bad.length ? "true" : "false");
  };
  ChipField.prototype.commit = function () {
    var text = this.entry.value.trim();
    if (!text) return false;
    this.pairs = this.pairs.concat(splitAddresses(text));
    this.entry.value = "";
    this.closeMenu();
    this.render();
    changed();
    return true;
  };
  ChipField.prototype.choose = function (suggestion) {
    this.pairs.push({ name: suggestion.name, address: suggestion.address });
    this.entry.value = "";
    this.closeMenu();
    this.render();
    this.entry.focus();
    changed();
  };
  ChipField.prototype.closeMenu = function () {
    this.menu.hidden = true;
    this.menu.textContent = "";
    this.active = -1;
    this.suggestions = [];
    this.entry.setAttribute("aria-expanded", "false");
    this.entry.removeAttribute("aria-activedescendant");
  };
  ChipField.prototype.showMenu = function (found) {
    var self = this;
    // Results for what was typed since can arrive after the user arrowed onto a suggestion:
    // that suggestion stays chosen while it is still offered (else Enter took the raw text).
    var kept = this.active >= 0 ? this.suggestions[this.active].address : null;
    this.menu.textContent = "";
    this.suggestions = found;
    this.active = -1;
    found.forEach(function (suggestion, index) {
      var option = document.createElement("li");
      option.id = "compose-" + self.name + "-option-" + index;
      option.setAttribute("role", "option");
      option.textContent = suggestion.label;
      option.setAttribute("dir", "auto");
      option.addEventListener("mousedown", function (event) {
        event.preventDefault(); // keep the focus in the entry
        self.choose(suggestion);
      });
      self.menu.appendChild(option);
    });
    this.menu.hidden = found.length === 0;
    this.entry.setAttribute("aria-expanded", found.length ? "true" : "false");
    for (var i = 0; i < found.length; i += 1) {
      if (found[i].address === kept) { this.highlight(i); break; }
    }
  };
  ChipField.prototype.highlight = function (index) {
    var options = this.menu.children;
    if (!options.length) return;
    this.active = (index + options.length) % options.length;
    for (var i = 0; i < options.length; i += 1) {
      options[i].setAttribute("aria-selected", i === this.active ? "true" : "false");
    }
    this.entry.setAttribute("aria-activedescendant", options[this.active].id);
  };
  ChipField.prototype.search = function () {
    var self = this;
    var query = this.entry.value.trim();
    if (query.length < 1 || /[,;]/.test(query)) { this.closeMenu(); return; }
    var url = form.getAttribute("data-recipients-url") + "?q=" + encodeURIComponent(query);
    fetch(url, { headers: { "HX-Request": "true" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : []; })
      .then(function (found) {
        if (self.entry.value.trim() !== query) return; // typed on since
        var taken = self.pairs.map(function (p) { return p.address; });
        self.showMenu(found.filter(function (s) { return taken.indexOf(s.address) === -1; }));
      })
      .catch(function () {});
  };
  ChipField.prototype.bind = function () {
    var self = this;
    var timer = null;
    this.entry.addEventListener("input", function () {
      if (/[,;]\s*$/.test(self.entry.value)) { self.commit(); return; }
      clearTimeout(timer);
      timer = setTimeout(function () { self.search(); }, 120);
    });
    this.entry.addEventListener("keydown", function (event) {
      if (event.key === "ArrowDown" && !self.menu.hidden) { event.preventDefault(); self.highlight(self.active + 1); }
      else if (event.key === "ArrowUp" && !self.menu.hidden) { event.preventDefault(); self.highlight(self.active - 1); }
      else if (event.key === "Escape" && !self.menu.hidden) { event.preventDefault(); self.closeMenu(); }
      else if (event.key === "Enter" && !(event.ctrlKey || event.metaKey)) {
        if (self.active >= 0) { event.preventDefault(); self.choose(self.suggestions[self.active]); }
        else if (self.entry.value.trim()) { event.preventDefault(); self.commit(); }
      } else if (event.key === "Tab" && self.active >= 0) {
        event.preventDefault();
        self.choose(self.suggestions[self.active]);
      } else if (event.key === "Backspace" && !self.entry.value && self.pairs.length) {
        var last = self.pairs.pop();
        self.render();
        self.entry.value = formatAddress(last);
        changed();
      }
    });
    this.entry.addEventListener("paste", function (event) {
      var text = (event.clipboardData || window.clipboardData).getData("text");
      if (/[,;\n]/.test(text) || EMAIL.test(text.trim())) {
        event.preventDefault();
        self.entry.value += text;
        self.commit();
      }
    });
    this.entry.addEventListener("blur", function () {
      self.commit();
      self.closeMenu();
    });
    this.row.addEventListener("click", function (event) {
      if (event.target === self.row.querySelector(".chip-input")) self.entry.focus();
    });
  };

  var chips = Array.prototype.map.call(form.querySelectorAll("[data-chips]"), function (row) {
    return new ChipField(row);
  });
  function commitChips() { chips.forEach(function (field) { field.commit(); }); }

  // ------------------------------------------------------------------ fields, local copy

  var storageKey = function () {
    return "threadline:compose:" + (state.draftId || location.pathname + location.search);
  };

  function fields() {
    var values = {};
    ["to", "cc", "bcc", "subject", "account_id", "reply_kind", "source_message_id",
     "record_kind", "record_id"].forEach(function (name) {
      var input = form.elements[name];
      if (input) values[name] = input.value;
    });
    values.body_html = editor.getHTML();
    return values;
  }

  function keepLocally() {
    try {
      localStorage.setItem(storageKey(), JSON.stringify({ at: Date.now(), fields: fields() }));
    } catch (error) { /* storage full or disabled: the server copy still autosaves */ }
  }

  function restoreLocal() {
    var raw;
    try { raw = localStorage.getItem(storageKey()); } catch (error) { return false; }
    if (!raw) return false;
    var copy;
    try { copy = JSON.parse(raw); } catch (error) { return false; }
    var serverTime = Date.parse(form.getAttribute("data-updated-at") || "") || 0;
    if (!copy || !copy.fields || copy.at <= serverTime) return false;
    var values = copy.fields;
    chips.forEach(function (field) {
      field.pairs = splitAddresses(values[field.name] || "");
      field.render();
    });
    if (form.elements.subject) form.elements.subject.value = values.subject || "";
    if (values.account_id && form.elements.account_id) form.elements.account_id.value = values.account_id;
    editor.setHTML(values.body_html || "");
    return true;
  }

  function setStatus(text) { statusLine.textContent = text; }

  function showErrors(errors) {
    form.querySelectorAll("[data-error-for]").forEach(function (box) {
      var message = errors[box.getAttribute("data-error-for")];
      if (message) { box.textContent = message; box.hidden = false; }
      else if (box.closest("[data-chips]") === null) { box.hidden = true; }
    });
    var general = errors.__all__ || errors.account || errors.attachments || errors.smart_fields || "";
    errorBox.textContent = general || "Some fields need a look before sending.";
    errorBox.hidden = false;
  }

  function clearErrors() {
    errorBox.hidden = true;
    form.querySelectorAll("[data-error-for]").forEach(function (box) {
      if (box.closest("[data-chips]") === null) box.hidden = true;
    });
  }

  function changed() {
    state.changes += 1;
    keepLocally();
    setStatus(state.sessionLost ? "Not saved: sign in again (kept in this browser)" : "Unsaved changes");
  }

  // ------------------------------------------------------------------ saving

  function post(url, body, options) {
    var init = {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "X-CSRFToken": token, "HX-Request": "true", Accept: "application/json" },
    };
    if (options && options.keepalive) init.keepalive = true;
    return fetch(url, init);
  }

  function asForm(values) {
    var body = new URLSearchParams();
    Object.keys(values).forEach(function (name) { body.append(name, values[name]); });
    return body;
  }

  // A save refused for want of a session: 401 (the login check), a redirect, or the CSRF
  // check's page (not JSON: every answer of the compose routes is JSON).
  function lostSession(response) {
    if (response.status === 401 || response.redirected) return true;
    var type = response.headers.get("Content-Type") || "";
    return (response.status === 400 || response.status === 403) && type.indexOf("json") === -1;
  }

  function sessionEnded() {
    state.sessionLost = true;
    keepLocally();
    setStatus("Not saved: your session ended. Your text is kept in this browser.");
    errorBox.textContent = "";
    errorBox.appendChild(document.createTextNode("Your session ended. "));
    var link = document.createElement("a");
    link.href = form.getAttribute("data-login-url") + "?next=" + encodeURIComponent(location.pathname);
    link.textContent = "Sign in again";
    errorBox.appendChild(link);
    errorBox.appendChild(document.createTextNode(
      ": this page then opens again with everything you typed (it is kept in this browser)."));
    errorBox.hidden = false;
  }

  function adopt(data) {
    var firstSave = !state.draftId;
    var oldKey = storageKey();
    state.draftId = String(data.id);
    state.saveUrl = data.save_url;
    state.sendUrl = data.send_url;
    state.previewUrl = data.preview_url;
    state.undoUrl = data.undo_url;
    state.uploadUrl = data.upload_url;
    form.setAttribute("data-draft-id", state.draftId);
    if (firstSave) {
      try { localStorage.removeItem(oldKey); } catch (error) { /* ignore */ }
      history.replaceState(null, "", data.edit_url);
      var discard = document.getElementById("compose-discard-form");
      discard.method = "post";
      discard.action = data.discard_url;
      discard.setAttribute("data-confirm", "Discard this draft?");
      var csrf = document.createElement("input");
      csrf.type = "hidden";
      csrf.name = "csrf_token";
      csrf.value = token;
      discard.appendChild(csrf);
      form.querySelectorAll("input[name=reply_kind], input[name=source_message_id], " +
                            "input[name=record_kind], input[name=record_id]")
        .forEach(function (input) { input.remove(); });
      renderAttachments(data.attachments);
    }
  }

  // Save what is typed; resolves true when the server has it. One save runs at a time.
  function save(options) {
    if (state.saving) return state.saving.then(function () { return save(options); });
    if (state.sending) return Promise.resolve(false);
    var upTo = state.changes;
    var url = state.draftId ? state.saveUrl : form.getAttribute("data-create-url");
    setStatus("Saving…");
    state.saving = post(url, asForm(fields()), options)
      .then(function (response) {
        if (lostSession(response)) { sessionEnded(); return false; }
        return response.json().then(function (data) {
          if (!response.ok) {
            showErrors(data.errors || {});
            setStatus("Not saved");
            return false;
          }
          adopt(data);
          state.sessionLost = false;
          if (errorBox.querySelector("a")) errorBox.hidden = true;
          state.savedChanges = Math.max(state.savedChanges, upTo);
          if (state.savedChanges >= state.changes) {
            try { localStorage.removeItem(storageKey()); } catch (error) { /* ignore */ }
            setStatus("Draft saved " + new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
          }
          form.setAttribute("data-saved", String(state.savedChanges));
          return true;
        });
      })
      .catch(function () {
        keepLocally();
        setStatus("Not saved: offline? Your text is kept in this browser; retrying.");
        return false;
      })
      .then(function (ok) { state.saving = null; return ok; });
    return state.saving;
  }

  function ensureDraft() {
    if (state.draftId) return Promise.resolve(true);
    state.changes += 1;
    return save();
  }

  setInterval(function () {
    if (state.changes > state.savedChanges && !state.saving && !state.sending) save();
  }, SAVE_EVERY_MS);

  // Leaving the page: one last save that outlives it (fetch keepalive).
  function saveOnLeave() {
    if (state.changes > state.savedChanges && !state.sending) {
      keepLocally();
      if (state.draftId) {
        post(state.saveUrl, asForm(fields()), { keepalive: true }).catch(function () {});
      }
    }
  }
  window.addEventListener("pagehide", saveOnLeave);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") saveOnLeave();
  });

  editor.addEventListener("input", function () {
    updateDirections();
    refreshQuoteToggle();
    changed();
  });
  form.addEventListener("input", function (event) {
    if (event.target.closest(".chip-entry, #compose-send-at, #compose-link-url, #compose-editor")) return;
    changed();
  });
  form.addEventListener("change", function (event) {
    if (event.target.name === "account_id") changed();
  });

  // ------------------------------------------------------------------ attachments

  var fileList = document.getElementById("compose-files");
  var fileInput = document.getElementById("compose-file-input");
  var dropZone = document.getElementById("compose-drop");

  function maxBytes() {
    var limit = parseInt(form.getAttribute("data-max-upload-bytes"), 10) || Infinity;
    var from = form.elements.account_id;
    var option = from && from.selectedOptions && from.selectedOptions[0];
    var account = option && parseInt(option.getAttribute("data-max-bytes"), 10);
    return account ? Math.min(limit, account) : limit;
  }

  function sizeLabel(size) {
    if (size < 1024) return size + " B";
    if (size < 1024 * 1024) return Math.floor(size / 1024) + " KB";
    return (size / (1024 * 1024)).toFixed(1) + " MB";
  }

  function attachmentItem(item) {
    var li = document.createElement("li");
    li.setAttribute("data-attachment-id", item.id);
    li.setAttribute("data-delete-url", item.delete_url);
    var link = document.createElement("a");
    link.href = item.url;
    link.textContent = item.filename;
    var size = document.createElement("span");
    size.className = "muted";
    size.textContent = " " + sizeLabel(item.size) + " ";
    var remove = document.createElement("button");
    remove.type = "button";
    remove.className = "link";
    remove.setAttribute("data-remove-attachment", "");
    remove.setAttribute("aria-label", "Remove " + item.filename);
    remove.textContent = "Remove";
    li.appendChild(link);
    li.appendChild(size);
    li.appendChild(remove);
    return li;
  }

  function renderAttachments(items) {
    if (!items) return;
    var pending = fileList.querySelectorAll("li.uploading");
    fileList.textContent = "";
    items.forEach(function (item) { fileList.appendChild(attachmentItem(item)); });
    pending.forEach(function (li) { fileList.appendChild(li); });
  }

  function attachmentError(message) {
    var box = form.querySelector('[data-error-for="attachments"]');
    box.textContent = message;
    box.hidden = !message;
  }

  // Upload one file with progress (XMLHttpRequest: fetch has no upload progress events).
  function upload(file, inline) {
    var limit = maxBytes();
    if (file.size > limit) {
      attachmentError(file.name + " is too large: attachments may add up to " + sizeLabel(limit) +
                      ". Share a link to it instead.");
      return Promise.resolve(null);
    }
    attachmentError("");
    return ensureDraft().then(function (ok) {
      if (!ok) return null;
      var row = null, bar = null;
      if (!inline) {
        row = document.createElement("li");
        row.className = "uploading";
        row.textContent = file.name + " ";
        bar = document.createElement("progress");
        bar.max = 100;
        bar.value = 0;
        bar.setAttribute("aria-label", "Uploading " + file.name);
        row.appendChild(bar);
        fileList.appendChild(row);
      }
      return new Promise(function (resolve) {
        var xhr = new XMLHttpRequest();
        xhr.open("POST", state.uploadUrl);
        xhr.setRequestHeader("X-CSRFToken", token);
        xhr.setRequestHeader("HX-Request", "true");
        xhr.upload.addEventListener("progress", function (event) {
          if (bar && event.lengthComputable) bar.value = Math.round((100 * event.loaded) / event.total);
        });
        xhr.addEventListener("load", function () {
          if (row) row.remove();
          var data = null;
          try { data = JSON.parse(xhr.responseText); } catch (error) { data = null; }
          if (xhr.status === 401 || (xhr.status === 400 && !data)) { sessionEnded(); resolve(null); return; }
          if (xhr.status !== 201 || !data) {
            attachmentError((data && data.errors && data.errors.attachments) ||
                            "Could not attach " + file.name + ".");
            resolve(null);
            return;
          }
          if (!inline) fileList.appendChild(attachmentItem(data));
          resolve(data);
        });
        xhr.addEventListener("error", function () {
          if (row) row.remove();
          attachmentError("Could not attach " + file.name + ": the connection failed.");
          resolve(null);
        });
        var body = new FormData();
        body.append("file", file, file.name);
        if (inline) body.append("inline", "1");
        xhr.send(body);
      });
    });
  }

  function insertImage(file) {
    if (!window.ThreadlineEditor.IMAGE_TYPES.test(file.type)) return;
    upload(file, true).then(function (data) {
      if (!data) return;
      editor.insertImage(data.url, { alt: data.filename });
      changed();
    });
  }

  fileInput.addEventListener("change", function () {
    Array.prototype.forEach.call(fileInput.files, function (file) { upload(file, false); });
    fileInput.value = "";
  });
  fileList.addEventListener("click", function (event) {
    var button = event.target.closest("[data-remove-attachment]");
    if (!button) return;
    var li = button.closest("li");
    post(li.getAttribute("data-delete-url"), new URLSearchParams()).then(function (response) {
      if (response.ok) li.remove();
      else if (lostSession(response)) sessionEnded();
    });
  });
  // Files dropped on the editor: images go inline, others become attachments.
  [dropZone, editorRoot].forEach(function (zone) {
    zone.addEventListener("dragover", function (event) {
      if (event.dataTransfer && Array.prototype.indexOf.call(event.dataTransfer.types, "Files") !== -1) {
        event.preventDefault();
        dropZone.classList.add("is-dragging");
      }
    }, true);
    zone.addEventListener("dragleave", function () { dropZone.classList.remove("is-dragging"); });
    zone.addEventListener("drop", function (event) {
      var files = event.dataTransfer && event.dataTransfer.files;
      if (!files || !files.length) return;
      event.preventDefault();
      event.stopPropagation();
      dropZone.classList.remove("is-dragging");
      Array.prototype.forEach.call(files, function (file) {
        if (zone === editorRoot && window.ThreadlineEditor.IMAGE_TYPES.test(file.type)) insertImage(file);
        else upload(file, false);
      });
    }, true);
  });

  // ------------------------------------------------------------------ send, undo, schedule

  var sendingBox = document.getElementById("compose-sending");
  var sendingText = document.getElementById("compose-sending-text");
  var undoButton = document.getElementById("compose-undo");
  var countdown = null;

  function lock(locked) {
    state.sending = locked;
    form.classList.toggle("is-sending", locked);
    // Not an edit: keep the editor's change observer out of it.
    editor.modifyDocument(function () {
      editorRoot.setAttribute("contenteditable", locked ? "false" : "true");
    });
    form.querySelectorAll("input, select, button, textarea").forEach(function (control) {
      if (control !== undoButton) control.disabled = locked;
    });
  }

  function send(scheduled) {
    commitChips();
    clearErrors();
    var values = fields();
    values.send_at = scheduled ? document.getElementById("compose-send-at").value : "";
    if (scheduled && !values.send_at) {
      showErrors({ send_at: "Pick a date and a time." });
      return;
    }
    ensureDraft().then(function (ok) {
      if (!ok) return;
      return save().then(function () {
        lock(true);
        return post(state.sendUrl, asForm(values)).then(function (response) {
          if (lostSession(response)) { lock(false); sessionEnded(); return; }
          return response.json().then(function (data) {
            if (!response.ok) { lock(false); showErrors(data.errors || {}); return; }
            try { localStorage.removeItem(storageKey()); } catch (error) { /* ignore */ }
            state.savedChanges = state.changes;
            sent(data);
          });
        });
      });
    }).catch(function () {
      lock(false);
      errorBox.textContent = "Could not reach Threadline. Your text is kept; try again.";
      errorBox.hidden = false;
    });
  }

  function sent(data) {
    sendingBox.hidden = false;
    undoButton.disabled = false;
    if (data.scheduled) {
      sendingText.textContent = "Scheduled for " + data.send_at_label + ".";
      undoButton.focus();
      countdown = setTimeout(function () { location.assign(data.outbox_url); }, 4000);
      return;
    }
    var left = data.undo_seconds;
    if (!left) {
      sendingText.textContent = "Sending…";
      location.assign(data.done_url);
      return;
    }
    sendingText.textContent = "Sending… (" + left + " s)";
    undoButton.focus();
    countdown = setInterval(function () {
      left -= 1;
      sendingText.textContent = "Sending… (" + left + " s)";
      if (left <= 0) {
        clearInterval(countdown);
        sendingText.textContent = "Sent to the outbox.";
        undoButton.disabled = true;
        location.assign(data.done_url);
      }
    }, 1000);
  }

  undoButton.addEventListener("click", function () {
    clearInterval(countdown);
    clearTimeout(countdown);
    undoButton.disabled = true;
    post(state.undoUrl, new URLSearchParams()).then(function (response) {
      return response.json().then(function (data) {
        if (!response.ok) {
          sendingText.textContent = (data.errors && data.errors.__all__) || "Too late to undo.";
          return;
        }
        sendingBox.hidden = true;
        lock(false);
        setStatus("Back to draft: not sent");
        editor.focus();
      });
    });
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    send(false);
  });
  document.getElementById("compose-schedule").addEventListener("click", function () { send(true); });
  form.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      send(false);
    }
  });
  document.querySelector("[data-discard]").addEventListener("click", function () {
    try { localStorage.removeItem(storageKey()); } catch (error) { /* ignore */ }
    state.changes = state.savedChanges; // nothing to save on the way out
  });

  // ------------------------------------------------------------------ start

  if (restoreLocal()) {
    changed();
    setStatus("Restored what you typed earlier; saving…");
    save();
  }
  updateDirections();
  refreshQuoteToggle();
  // Extensions loaded before this script (signatures.js) hook in here, before any save.
  form.dispatchEvent(new CustomEvent("compose:ready", { detail: { editor: editor, changed: changed } }));
  // A forward brings the original's attachments: save at once so they are listed.
  if (!state.draftId && form.elements.reply_kind && form.elements.reply_kind.value === "forward") {
    ensureDraft();
  }
  // For static/js/templates_picker.js: fill this mail from a template through its draft.
  window.ThreadlineCompose = {
    editor: editor,
    ensureDraft: ensureDraft,
    changed: changed,
    renderAttachments: renderAttachments,
    draftUrl: function () { return state.saveUrl; },
  };
  form.setAttribute("data-ready", "true");
  var first = form.querySelector("#compose-to-input");
  if (first && chips[0] && chips[0].pairs.length) editor.focus();
  else if (first) first.focus();
})();
