// Compose's template picker: search the usable templates (by name and text), pick one, and
// the draft is filled from it on the server (subject, body, files: views/compose.py
// apply_template); a mail already written is only replaced after the page's confirm dialog.
// The signature block ([data-signature]) and a reply's quoted original are kept.
(function () {
  "use strict";

  var form = document.getElementById("compose-form");
  var picker = document.querySelector(".template-picker");
  var compose = window.ThreadlineCompose;
  if (!form || !picker || !compose) return;

  var toggle = document.getElementById("template-picker-toggle");
  var panel = document.getElementById("template-picker-panel");
  var search = document.getElementById("template-search");
  var results = document.getElementById("template-results");
  var empty = document.getElementById("template-picker-empty");
  var status = document.getElementById("template-picker-status");
  var subject = document.getElementById("compose-subject");
  var editorRoot = document.getElementById("compose-editor");
  var token = form.querySelector("input[name=csrf_token]").value;
  var found = [];
  var active = -1;
  var timer = null;
  picker.hidden = false;

  function open(show) {
    panel.hidden = !show;
    toggle.setAttribute("aria-expanded", show ? "true" : "false");
    if (show) {
      search.value = "";
      load("");
      search.focus();
    }
  }

  function load(query) {
    var url = picker.getAttribute("data-templates-url") + "?q=" + encodeURIComponent(query);
    fetch(url, { headers: { "HX-Request": "true" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : []; })
      .then(function (items) {
        if (search.value.trim() !== query) return; // typed on since
        show(items);
      })
      .catch(function () {});
  }

  function show(items) {
    found = items;
    active = -1;
    results.textContent = "";
    items.forEach(function (item, index) {
      var option = document.createElement("li");
      option.id = "template-option-" + index;
      option.setAttribute("role", "option");
      option.setAttribute("aria-selected", "false");
      option.setAttribute("data-template-id", item.id);
      var name = document.createElement("strong");
      name.textContent = item.name;
      option.appendChild(name);
      var detail = document.createElement("span");
      detail.className = "muted small";
      detail.textContent = (item.subject ? " " + item.subject : "") + (item.shared ? " · shared" : "");
      option.appendChild(detail);
      option.addEventListener("mousedown", function (event) { event.preventDefault(); });
      option.addEventListener("click", function () { choose(item); });
      results.appendChild(option);
    });
    empty.hidden = items.length > 0;
    search.setAttribute("aria-expanded", items.length ? "true" : "false");
    search.removeAttribute("aria-activedescendant");
  }

  function highlight(index) {
    var options = results.children;
    if (!options.length) return;
    active = (index + options.length) % options.length;
    for (var i = 0; i < options.length; i += 1) {
      options[i].setAttribute("aria-selected", i === active ? "true" : "false");
    }
    search.setAttribute("aria-activedescendant", options[active].id);
  }

  // What stays when the body is replaced: the signature, and a reply's quoted original.
  function keptHtml() {
    var kept = editorRoot.querySelectorAll("[data-signature], .tl-attribution, blockquote[type=cite]");
    return Array.prototype.filter.call(kept, function (node) {
      return !node.parentElement.closest("[data-signature], blockquote[type=cite]");
    }).map(function (node) { return node.outerHTML; }).join("");
  }

  // Written already: a subject, or text or an image outside the parts that are kept.
  function isWritten() {
    if (subject.value.trim()) return true;
    var copy = editorRoot.cloneNode(true);
    copy.querySelectorAll("[data-signature], .tl-attribution, blockquote[type=cite]")
      .forEach(function (node) { node.remove(); });
    return !!(copy.textContent.trim() || copy.querySelector("img"));
  }

  function confirmReplace(item) {
    var dialog = document.getElementById("confirm-dialog");
    return new Promise(function (resolve) {
      document.getElementById("confirm-text").textContent =
        "Replace the subject and text of this mail with the template “" + item.name + "”?";
      document.getElementById("confirm-ok").textContent = "Replace";
      dialog.returnValue = "";
      dialog.onclose = function () { resolve(dialog.returnValue === "ok"); };
      dialog.showModal();
    });
  }

  function choose(item) {
    open(false);
    var asked = isWritten() ? confirmReplace(item) : Promise.resolve(true);
    asked.then(function (ok) {
      if (!ok) { toggle.focus(); return; }
      apply(item);
    });
  }

  function apply(item) {
    status.textContent = "Applying “" + item.name + "”…";
    compose.ensureDraft().then(function (saved) {
      if (!saved) { status.textContent = "Could not save the draft; the template was not applied."; return; }
      var body = new URLSearchParams();
      body.append("template_id", item.id);
      // The draft's own URL (/mail/drafts/<id>) + /template: views/compose.py apply_template.
      return fetch(compose.draftUrl() + "/template", {
        method: "POST",
        body: body,
        credentials: "same-origin",
        headers: { "X-CSRFToken": token, "HX-Request": "true" },
      }).then(function (response) {
        return response.json().then(function (data) {
          if (!response.ok) {
            status.textContent = (data.errors && data.errors.__all__) || "Could not apply the template.";
            return;
          }
          var kept = keptHtml();
          subject.value = data.subject;
          compose.editor.setHTML(data.body_html + kept);
          compose.renderAttachments(data.attachments);
          compose.changed();
          status.textContent = "Template “" + item.name + "” applied.";
          form.setAttribute("data-template-applied", String(item.id));
          compose.editor.focus();
        });
      });
    }).catch(function () {
      status.textContent = "Could not reach Threadline; the template was not applied.";
    });
  }

  toggle.addEventListener("click", function () { open(panel.hidden); });
  search.addEventListener("input", function (event) {
    event.stopPropagation(); // searching is not an edit of the mail (compose.js autosaves those)
    clearTimeout(timer);
    timer = setTimeout(function () { load(search.value.trim()); }, 120);
  });
  search.addEventListener("keydown", function (event) {
    if (event.key === "ArrowDown") { event.preventDefault(); highlight(active + 1); }
    else if (event.key === "ArrowUp") { event.preventDefault(); highlight(active - 1); }
    else if (event.key === "Enter") {
      event.preventDefault(); // never submit (send) the mail from here
      if (active >= 0) choose(found[active]);
      else if (found.length === 1) choose(found[0]);
    } else if (event.key === "Escape") {
      event.preventDefault();
      open(false);
      toggle.focus();
    }
  });
  document.addEventListener("click", function (event) {
    if (!panel.hidden && !picker.contains(event.target)) open(false);
  });
})();
