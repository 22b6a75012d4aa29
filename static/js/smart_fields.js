// Smart fields in an editor: an "Insert field" picker for the toolbar, chips in the body,
// {{Label}} tokens in the subject, fallback texts, and Preview (services/smart_fields.py fills
// them when the mail is sent). Used by compose.js and the template editor through
// window.ThreadlineSmartFields.attach({editor, toolbar, subject}). The fields come from this
// script tag's data-fields (templates/macros/smart_fields.html). No inline scripts (CSP).
(function () {
  "use strict";

  var script = document.currentScript;
  var FIELDS = [];
  try { FIELDS = JSON.parse((script && script.getAttribute("data-fields")) || "[]"); } catch (error) { FIELDS = []; }
  var CHIP = "span[data-smart-field]";
  var MAX_FALLBACK = 200;
  var counter = 0;

  function fieldFor(key) {
    for (var i = 0; i < FIELDS.length; i += 1) if (FIELDS[i].key === key) return FIELDS[i];
    return null;
  }

  function element(tag, attributes, text) {
    var node = document.createElement(tag);
    Object.keys(attributes || {}).forEach(function (name) { node.setAttribute(name, attributes[name]); });
    if (text) node.textContent = text;
    return node;
  }

  // The chip as stored in the body (contenteditable=false keeps it one unit while editing).
  function makeChip(field, fallback) {
    var chip = element("span", { "data-smart-field": field.key, contenteditable: "false" }, field.label);
    if (fallback) chip.setAttribute("data-fallback", fallback);
    return chip;
  }

  function attach(options) {
    var editor = options.editor;
    var toolbar = options.toolbar;
    var subject = options.subject || null;
    var root = editor.getRoot();
    var id = "smart-fields-" + (counter += 1);
    var target = "body"; // where the picker inserts: the body or the subject, whichever was last used

    // Chips coming from stored HTML lose contenteditable in the sanitizers: set it again.
    function markChips() {
      var loose = root.querySelectorAll(CHIP + ':not([contenteditable="false"])');
      if (!loose.length) return;
      editor.modifyDocument(function () {
        loose.forEach(function (chip) { chip.setAttribute("contenteditable", "false"); });
      });
    }
    markChips();
    editor.addEventListener("input", markChips);
    root.addEventListener("focus", function () { target = "body"; }, true);
    if (subject) subject.addEventListener("focus", function () { target = "subject"; });

    // ---------------------------------------------------------------- the picker

    var picker = element("div", { class: "smart-field-picker" });
    var button = element("button", {
      type: "button", "aria-haspopup": "true", "aria-expanded": "false", "aria-controls": id + "-menu",
      title: "Insert a field filled from the CRM when the mail is sent",
    }, "Insert field");
    var menu = element("div", { id: id + "-menu", class: "smart-field-menu", role: "menu", "aria-label": "Smart fields", hidden: "" });
    picker.appendChild(button);
    picker.appendChild(menu);
    toolbar.appendChild(picker);

    function buildMenu() {
      menu.textContent = "";
      var hint = element("p", { class: "smart-field-hint", id: id + "-hint" },
        target === "subject" && subject
          ? "Into the subject, as {{Field}}; write {{Field|text}} for a text to use when it is empty."
          : "Into the message. Click a field in the message to give it a text for when it is empty.");
      menu.appendChild(hint);
      var groups = [];
      FIELDS.forEach(function (field) {
        if (groups.indexOf(field.group) === -1) groups.push(field.group);
      });
      groups.forEach(function (group, index) {
        var box = element("div", { role: "group", "aria-labelledby": id + "-group-" + index, class: "smart-field-group" });
        box.appendChild(element("div", { id: id + "-group-" + index, class: "smart-field-group-label" }, group));
        FIELDS.filter(function (f) { return f.group === group; }).forEach(function (field) {
          box.appendChild(element("button", { type: "button", role: "menuitem", tabindex: "-1", "data-insert": field.key }, field.label));
        });
        menu.appendChild(box);
      });
      // The chips already in the message, so a keyboard can reach their fallback texts.
      var chips = root.querySelectorAll(CHIP);
      if (chips.length) {
        var existing = element("div", { role: "group", "aria-labelledby": id + "-in-message", class: "smart-field-group" });
        existing.appendChild(element("div", { id: id + "-in-message", class: "smart-field-group-label" }, "Fallback texts of fields in the message"));
        chips.forEach(function (chip, index) {
          var field = fieldFor(chip.getAttribute("data-smart-field"));
          var fallback = chip.getAttribute("data-fallback");
          var label = (field ? field.label : chip.textContent) + (fallback ? " — if empty: " + fallback : " — no fallback");
          existing.appendChild(element("button", { type: "button", role: "menuitem", tabindex: "-1", "data-chip": String(index) }, label));
        });
        menu.appendChild(existing);
      }
    }

    function items() { return Array.prototype.slice.call(menu.querySelectorAll("[role=menuitem]")); }

    function open(focusLast) {
      buildMenu();
      menu.hidden = false;
      button.setAttribute("aria-expanded", "true");
      var all = items();
      if (all.length) all[focusLast ? all.length - 1 : 0].focus();
    }

    function close(refocus) {
      if (menu.hidden) return;
      menu.hidden = true;
      button.setAttribute("aria-expanded", "false");
      if (refocus) button.focus();
    }

    function insert(field) {
      if (target === "subject" && subject) {
        var start = subject.selectionStart == null ? subject.value.length : subject.selectionStart;
        var end = subject.selectionEnd == null ? start : subject.selectionEnd;
        subject.focus();
        subject.setRangeText("{{" + field.label + "}}", start, end, "end");
        subject.dispatchEvent(new Event("input", { bubbles: true }));
        return;
      }
      editor.focus();
      editor.insertElement(makeChip(field));
    }

    button.addEventListener("click", function () {
      if (menu.hidden) open(false); else close(true);
    });
    button.addEventListener("keydown", function (event) {
      if (event.key === "ArrowDown") { event.preventDefault(); open(false); }
      if (event.key === "ArrowUp") { event.preventDefault(); open(true); }
    });
    menu.addEventListener("click", function (event) {
      var item = event.target.closest("[role=menuitem]");
      if (!item) return;
      close(false);
      if (item.hasAttribute("data-insert")) insert(fieldFor(item.getAttribute("data-insert")));
      else openFallback(root.querySelectorAll(CHIP)[parseInt(item.getAttribute("data-chip"), 10)]);
    });
    menu.addEventListener("keydown", function (event) {
      var all = items();
      var at = all.indexOf(document.activeElement);
      var moves = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: all.length - 1 };
      if (event.key in moves) {
        event.preventDefault();
        all[(moves[event.key] + all.length) % all.length].focus();
      } else if (event.key === "Escape") {
        event.preventDefault();
        close(true);
      } else if (event.key === "Tab") {
        close(false);
      }
    });
    document.addEventListener("click", function (event) {
      if (!picker.contains(event.target)) close(false);
    });

    // ---------------------------------------------------------------- fallback texts

    var bar = element("div", { class: "smart-field-fallback", role: "group", "aria-label": "Fallback text", hidden: "" });
    var barLabel = element("label", { for: id + "-fallback", id: id + "-fallback-label" });
    var input = element("input", { id: id + "-fallback", type: "text", maxlength: String(MAX_FALLBACK), autocomplete: "off", dir: "auto" });
    var apply = element("button", { type: "button", class: "btn btn-small" }, "Set fallback");
    var remove = element("button", { type: "button", class: "btn btn-small" }, "Remove field");
    var cancel = element("button", { type: "button", class: "btn btn-small" }, "Cancel");
    [barLabel, input, apply, remove, cancel].forEach(function (node) { bar.appendChild(node); });
    toolbar.parentNode.insertBefore(bar, toolbar.nextSibling);
    var editing = null;

    function openFallback(chip) {
      if (!chip) return;
      var field = fieldFor(chip.getAttribute("data-smart-field"));
      editing = chip;
      barLabel.textContent = "Text to use when “" + (field ? field.label : chip.textContent) + "” has no value";
      input.value = chip.getAttribute("data-fallback") || "";
      bar.hidden = false;
      input.focus();
      input.select();
    }
    function closeFallback() {
      bar.hidden = true;
      editing = null;
      editor.focus();
    }
    apply.addEventListener("click", function () {
      if (!editing) return;
      var text = input.value.replace(/\s+/g, " ").trim().slice(0, MAX_FALLBACK);
      // An attribute change: Squire's observer reports it as an edit, so the draft saves.
      if (text) editing.setAttribute("data-fallback", text);
      else editing.removeAttribute("data-fallback");
      closeFallback();
    });
    remove.addEventListener("click", function () {
      if (editing) editing.remove();
      closeFallback();
    });
    cancel.addEventListener("click", closeFallback);
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter") { event.preventDefault(); apply.click(); }
      if (event.key === "Escape") { event.preventDefault(); closeFallback(); }
    });
    root.addEventListener("click", function (event) {
      var chip = event.target.closest && event.target.closest(CHIP);
      if (chip && root.contains(chip)) openFallback(chip);
    });

    if (options.preview) attachPreview(options.preview);
    return { insert: insert, openFallback: openFallback };
  }

  // ---------------------------------------------------------------- preview

  // options: container (where the button goes) and url(): a Promise of the preview URL of
  // the saved draft (compose saves first), or null when it could not be saved.
  function attachPreview(options) {
    var button = element("button", { type: "button", class: "btn", id: "compose-preview" }, "Preview");
    var panel = element("section", { class: "compose-preview-panel card", "aria-live": "polite", "aria-label": "Preview", hidden: "" });
    var first = options.container.firstElementChild; // Send: Preview goes right after it
    options.container.insertBefore(button, first ? first.nextSibling : null);
    options.container.parentNode.insertBefore(panel, options.container.nextSibling);
    button.addEventListener("click", function () {
      button.disabled = true;
      panel.hidden = false;
      panel.textContent = "Filling in the fields…";
      options.url()
        .then(function (url) {
          if (!url) throw new Error("not saved");
          return fetch(url, { headers: { "HX-Request": "true" }, credentials: "same-origin" });
        })
        .then(function (response) {
          if (!response.ok) throw new Error("preview failed");
          return response.text();
        })
        .then(function (html) {
          // A server-rendered fragment: the mail itself sits in a sandboxed srcdoc frame.
          panel.innerHTML = html;
          var close = element("button", { type: "button", class: "btn btn-small" }, "Close preview");
          close.addEventListener("click", function () { panel.hidden = true; button.focus(); });
          panel.appendChild(close);
        })
        .catch(function () {
          panel.textContent = "The preview could not be made: save the draft and try again.";
        })
        .then(function () { button.disabled = false; });
    });
  }

  window.ThreadlineSmartFields = { attach: attach, fields: FIELDS, makeChip: makeChip };
})();
