// Settings > Templates editor: the compose editor (static/js/editor.js) on the template's
// body, inline images and files uploaded to the template, smart-field chips when
// static/js/smart_fields.js is loaded. The form itself is posted normally; a new template
// is saved once (as JSON) before its first upload, since files belong to a saved template.
(function () {
  "use strict";

  var form = document.getElementById("template-form");
  if (!form || !window.ThreadlineEditor) return;

  var source = document.getElementById("template-body");
  var editorRoot = document.getElementById("template-editor");
  var toolbar = form.querySelector(".compose-toolbar");
  var imageInput = document.getElementById("template-image-input");
  var fileInput = document.getElementById("template-file-input");
  var fileList = document.getElementById("template-files");
  var errorBox = form.querySelector('[data-error-for="attachments"]');
  var token = form.querySelector("input[name=csrf_token]").value;
  var editor = window.ThreadlineEditor.create({
    root: editorRoot,
    source: source,
    toolbar: toolbar,
    imageInput: imageInput,
    onImage: insertImage,
  });
  if (window.ThreadlineSmartFields) {
    window.ThreadlineSmartFields.attach({
      editor: editor,
      toolbar: toolbar,
      subject: document.getElementById("template-subject"),
    });
  }

  function sync() { source.value = editor.getHTML(); }
  form.addEventListener("submit", sync);

  function showError(message) {
    errorBox.textContent = message || "";
    errorBox.hidden = !message;
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "X-CSRFToken": token, "HX-Request": "true", Accept: "application/json" },
    });
  }

  // Files belong to a saved template: save a new one first and carry on as its editor.
  function ensureSaved() {
    if (form.getAttribute("data-upload-url")) return Promise.resolve(true);
    sync();
    return post(form.action, new FormData(form)).then(function (response) {
      if (response.status !== 201) {
        showError("Save the template first (it needs a name) to add images and files.");
        return false;
      }
      return response.json().then(function (data) {
        form.setAttribute("data-upload-url", data.upload_url);
        form.action = data.edit_url;
        history.replaceState(null, "", data.edit_url);
        return true;
      });
    });
  }

  function upload(file, inline) {
    var limit = parseInt(form.getAttribute("data-max-upload-bytes"), 10) || Infinity;
    if (file.size > limit) {
      showError(file.name + " is too large for a template.");
      return Promise.resolve(null);
    }
    showError("");
    return ensureSaved().then(function (ok) {
      if (!ok) return null;
      var body = new FormData();
      body.append("file", file, file.name);
      if (inline) body.append("inline", "1");
      return post(form.getAttribute("data-upload-url"), body).then(function (response) {
        return response.json().then(function (data) {
          if (response.status !== 201) {
            showError((data.errors && data.errors.attachments) || "Could not attach " + file.name + ".");
            return null;
          }
          return data;
        });
      });
    }).catch(function () {
      showError("Could not attach " + file.name + ": the connection failed.");
      return null;
    });
  }

  function listFile(data) {
    var li = document.createElement("li");
    li.setAttribute("data-attachment-id", data.id);
    var link = document.createElement("a");
    link.href = data.url;
    link.textContent = data.filename;
    var remove = document.createElement("button");
    remove.type = "button";
    remove.className = "link";
    remove.textContent = "Remove";
    remove.setAttribute("aria-label", "Remove " + data.filename);
    remove.addEventListener("click", function () {
      post(data.delete_url, new URLSearchParams()).then(function (response) {
        if (response.ok) li.remove();
      });
    });
    li.appendChild(link);
    li.appendChild(document.createTextNode(" "));
    li.appendChild(remove);
    fileList.appendChild(li);
  }

  function insertImage(file) {
    if (!window.ThreadlineEditor.IMAGE_TYPES.test(file.type)) return;
    upload(file, true).then(function (data) {
      if (data) editor.insertImage(data.url, { alt: data.filename });
    });
  }

  fileInput.addEventListener("change", function () {
    Array.prototype.forEach.call(fileInput.files, function (file) {
      upload(file, false).then(function (data) { if (data) listFile(data); });
    });
    fileInput.value = "";
  });
  // Files listed by the server are removed in place too, so what is typed stays.
  fileList.addEventListener("click", function (event) {
    var button = event.target.closest("button[form]");
    if (!button) return;
    event.preventDefault();
    var li = button.closest("li");
    post(document.getElementById(button.getAttribute("form")).action, new URLSearchParams())
      .then(function (response) { if (response.ok) li.remove(); });
  });
  form.setAttribute("data-ready", "true");
})();
