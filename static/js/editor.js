// The rich-text editor shared by compose and Settings > Templates: Squire with DOMPurify
// paste cleaning, the formatting toolbar (templates/macros/editor.html) and its link bar.
// window.ThreadlineEditor.create({root, source, toolbar, imageInput, onImage}) returns the
// Squire editor, started from the HTML in `source` (a textarea it hides); each image chosen
// with the toolbar's button or pasted goes to onImage(file), which decides what it becomes.
(function () {
  "use strict";

  if (!window.Squire || !window.DOMPurify) return;

  function cleanAttributes(node, data) {
    // Paste from word processors: drop their classes and mso-* styles; keep our own markup.
    if (data.attrName === "class") data.keepAttr = false;
    if (data.attrName === "style") {
      data.attrValue = data.attrValue
        .split(";")
        .filter(function (rule) { return rule.trim() && !/^\s*mso-/i.test(rule) && !/url\(/i.test(rule); })
        .join(";");
      if (!data.attrValue) data.keepAttr = false;
    }
    if (node.nodeName === "IMG" && data.attrName === "src") {
      // Nothing remote loads in compose (SECURITY.md R8): only our URLs and raster data:.
      var ok = /^\/(?!\/)/.test(data.attrValue) || /^data:image\/(png|gif|jpeg|webp);/i.test(data.attrValue);
      if (!ok) data.keepAttr = false;
    }
  }

  function sanitize(html) {
    DOMPurify.addHook("uponSanitizeAttribute", cleanAttributes);
    try {
      var fragment = DOMPurify.sanitize(html, {
        RETURN_DOM_FRAGMENT: true,
        FORBID_TAGS: ["style", "meta", "link", "title", "form", "input", "button", "textarea", "select"],
        ALLOW_DATA_ATTR: false,
        // Our own markup: smart-field chips and the signature block survive setHTML and paste.
        ADD_ATTR: ["data-smart-field", "data-fallback", "data-signature"],
      });
      return document.importNode(fragment, true);
    } finally {
      DOMPurify.removeHook("uponSanitizeAttribute");
    }
  }

  function bindToolbar(editor, toolbar, imageInput) {
    var linkBar = toolbar.nextElementSibling; // the macro puts the link bar right after it
    var linkInput = linkBar.querySelector("input[type=url]");
    var commands = {
      bold: function () { editor.hasFormat("B") ? editor.removeBold() : editor.bold(); },
      italic: function () { editor.hasFormat("I") ? editor.removeItalic() : editor.italic(); },
      underline: function () { editor.hasFormat("U") ? editor.removeUnderline() : editor.underline(); },
      bullets: function () { editor.hasFormat("UL") ? editor.removeList() : editor.makeUnorderedList(); },
      numbers: function () { editor.hasFormat("OL") ? editor.removeList() : editor.makeOrderedList(); },
      quote: function () {
        editor.hasFormat("BLOCKQUOTE") ? editor.decreaseQuoteLevel() : editor.increaseQuoteLevel();
      },
      clear: function () { editor.removeAllFormatting(); },
      link: function () {
        linkBar.hidden = false;
        linkInput.value = "";
        linkInput.focus();
      },
      image: function () { imageInput.click(); },
    };
    toolbar.addEventListener("click", function (event) {
      var button = event.target.closest("button[data-command]");
      if (!button || !commands[button.getAttribute("data-command")]) return;
      commands[button.getAttribute("data-command")]();
      if (button.getAttribute("data-command") !== "link") editor.focus();
    });
    function applyLink() {
      var url = linkInput.value.trim();
      linkBar.hidden = true;
      editor.focus();
      if (!url) return;
      if (!/^(https?:|mailto:)/i.test(url)) url = (url.indexOf("@") > 0 ? "mailto:" : "https://") + url;
      editor.makeLink(url);
    }
    linkBar.querySelector("[data-link-apply]").addEventListener("click", applyLink);
    linkBar.querySelector("[data-link-cancel]").addEventListener("click", function () {
      linkBar.hidden = true;
      editor.focus();
    });
    linkInput.addEventListener("keydown", function (event) {
      if (event.key === "Enter") { event.preventDefault(); applyLink(); }
      if (event.key === "Escape") { linkBar.hidden = true; editor.focus(); }
    });
    editor.addEventListener("pathChange", function () {
      var formats = { bold: "B", italic: "I", underline: "U" };
      Object.keys(formats).forEach(function (name) {
        var button = toolbar.querySelector('[data-command="' + name + '"]');
        button.setAttribute("aria-pressed", editor.hasFormat(formats[name]) ? "true" : "false");
      });
    });
  }

  function bindImages(editor, imageInput, onImage) {
    imageInput.addEventListener("change", function () {
      Array.prototype.forEach.call(imageInput.files, onImage);
      imageInput.value = "";
    });
    editor.addEventListener("pasteImage", function (event) {
      var items = event.detail.clipboardData.items;
      for (var i = 0; i < items.length; i += 1) {
        if (items[i].kind === "file") onImage(items[i].getAsFile());
      }
    });
  }

  function create(options) {
    var editor = new Squire(options.root, { blockTag: "DIV", sanitizeToDOMFragment: sanitize });
    options.source.hidden = true;
    editor.setHTML(options.source.value);
    bindToolbar(editor, options.toolbar, options.imageInput);
    if (options.onImage) bindImages(editor, options.imageInput, options.onImage);
    return editor;
  }

  window.ThreadlineEditor = {
    create: create,
    sanitize: sanitize,
    IMAGE_TYPES: /^image\/(png|jpeg|gif|webp)$/, // what an email's inline image may be
  };
})();
