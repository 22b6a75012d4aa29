// Signatures: the signature editor of Settings > Email accounts > Signatures, and the
// signature block of compose (<div data-signature="ID">): the From account's default goes
// into a new mail, reply or forward; changing From swaps it for that account's default (an
// edited block too, as Gmail and Outlook do); the toolbar menu switches or removes it. A saved
// draft keeps its block as it was. Loaded before compose.js, which calls in on "compose:ready".
(function () {
  "use strict";

  var MARK = "data-signature";

  function blankLine() {
    var line = document.createElement("div");
    line.appendChild(document.createElement("br"));
    return line;
  }

  function isBlank(node) {
    return !!node && node.nodeName === "DIV" && !node.hasAttribute(MARK) &&
      !node.querySelector("img") && !(node.textContent || "").trim();
  }

  // ------------------------------------------------------------------ compose

  function composeSignatures(form, editor, changed) {
    var menu = document.getElementById("compose-signature");
    if (!menu) return;
    var root = editor.getRoot();
    var from = form.elements.account_id;
    var byAccount = JSON.parse(menu.getAttribute("data-signatures") || "{}");
    var position = menu.getAttribute("data-position") === "below" ? "below" : "above";

    function current() { return root.querySelector("[" + MARK + "]"); }
    function choices() {
      return byAccount[from ? from.value : ""] || { default: null, signatures: [] };
    }
    function find(id) {
      return choices().signatures.filter(function (s) { return String(s.id) === String(id); })[0];
    }

    function block(signature) {
      var div = document.createElement("div");
      div.setAttribute(MARK, String(signature.id));
      div.appendChild(ThreadlineEditor.sanitize(signature.html));
      return div;
    }

    // The top-level element where the quoted original starts (services/compose.quote_html:
    // the "... wrote:" line before blockquote[type=cite], or the forwarded-message header).
    function quoteStart() {
      var children = Array.prototype.slice.call(root.children);
      for (var i = 0; i < children.length; i += 1) {
        var child = children[i];
        if (child.matches("blockquote[type=cite]")) {
          var before = child.previousElementSibling;
          return before && /wrote:\s*$/.test(before.textContent || "") ? before : child;
        }
        if (/^-{5,} Forwarded message/.test((child.textContent || "").trim())) return child;
      }
      return null;
    }

    // A block where there is none: above or below the quote (the user's setting), else last.
    function place(div) {
      var anchor = quoteStart();
      if (anchor && position === "above") {
        root.insertBefore(div, anchor);
        root.insertBefore(blankLine(), anchor);
        return;
      }
      if (!isBlank(root.lastElementChild)) root.appendChild(blankLine());
      root.appendChild(div);
    }

    // Remove a block and the blank line place() put beside it.
    function remove(old) {
      var next = old.nextElementSibling, previous = old.previousElementSibling;
      if (isBlank(next) && next.nextElementSibling) next.remove();
      else if (isBlank(previous) && previous.previousElementSibling) previous.remove();
      old.remove();
    }

    function refreshMenu() {
      var entry = choices();
      menu.textContent = "";
      entry.signatures.concat([{ id: "", name: "No signature" }]).forEach(function (s) {
        var option = document.createElement("option");
        option.value = String(s.id);
        option.textContent = s.name;
        menu.appendChild(option);
      });
      var shown = current();
      menu.value = shown ? shown.getAttribute(MARK) : "";
      menu.parentNode.hidden = entry.signatures.length === 0 && !shown;
    }

    // Show signature `id` ("" for none) in place of the current block.
    function show(id) {
      var signature = id ? find(id) : null;
      var old = current();
      editor.saveUndoState();
      if (old && signature) old.replaceWith(block(signature));
      else if (old) remove(old);
      else if (signature) place(block(signature));
      refreshMenu();
      changed();
    }

    menu.addEventListener("change", function () { show(menu.value); });
    if (from && from.tagName === "SELECT") {
      from.addEventListener("change", function () { show(choices().default || ""); });
    }
    // A new mail gets the default once; a draft (or a restored copy) keeps what it has.
    var initial = find(choices().default);
    if (!form.getAttribute("data-draft-id") && !current() && initial) {
      editor.modifyDocument(function () { place(block(initial)); }); // not an edit to save
    }
    refreshMenu();
  }

  var composeForm = document.getElementById("compose-form");
  if (composeForm) {
    composeForm.addEventListener("compose:ready", function (event) {
      composeSignatures(composeForm, event.detail.editor, event.detail.changed);
    });
  }

  // ------------------------------------------------------------------ the signature editor

  var signatureForm = document.getElementById("signature-form");
  if (!signatureForm || !window.ThreadlineEditor) return;
  var source = document.getElementById("signature-body");
  var editorRoot = document.getElementById("signature-editor");
  var imageInput = document.getElementById("signature-image-input");
  var imageError = document.getElementById("signature-image-error");
  var maxBytes = parseInt(signatureForm.getAttribute("data-max-image-bytes"), 10) || 0;
  var editor = ThreadlineEditor.create({
    root: editorRoot,
    source: source,
    toolbar: signatureForm.querySelector(".compose-toolbar"),
    imageInput: imageInput,
    onImage: insertImage,
  });
  editorRoot.hidden = false;

  function say(message) {
    imageError.textContent = message;
    imageError.hidden = !message;
  }

  // Images are kept in the signature itself as data: URIs, so they must stay small.
  function insertImage(file) {
    if (!ThreadlineEditor.IMAGE_TYPES.test(file.type)) {
      say(file.name + ": only PNG, JPEG, GIF and WebP images go into a signature.");
      return;
    }
    if (maxBytes && file.size > maxBytes) {
      say(file.name + " is " + Math.ceil(file.size / 1024) + " KB: an image in a signature may " +
          "be at most " + Math.floor(maxBytes / 1024) + " KB. Use a smaller image.");
      return;
    }
    say("");
    var reader = new FileReader();
    reader.addEventListener("load", function () {
      editor.insertImage(reader.result, { alt: file.name });
    });
    reader.readAsDataURL(file);
  }

  signatureForm.addEventListener("submit", function () { source.value = editor.getHTML(); });
  signatureForm.setAttribute("data-ready", "true");
})();
