// Threadline's only first-party script: htmx hardening and small progressive enhancements.
// No inline scripts anywhere (CSP script-src 'self').
(function () {
  "use strict";

  document.addEventListener("DOMContentLoaded", function () {
    if (!window.htmx) return;
    // SECURITY.md R7: mail content must never drive htmx.
    htmx.config.allowEval = false;
    htmx.config.allowScriptTags = false;
    htmx.config.selfRequestsOnly = true;
    htmx.config.historyCacheSize = 0;
    htmx.config.includeIndicatorStyles = false;
    // Swap 422 (invalid form) and 429 responses so field errors show up in place.
    htmx.config.responseHandling = [
      { code: "204", swap: false },
      { code: "[23]..", swap: true },
      { code: "422", swap: true },
      { code: "429", swap: true },
      { code: "[45]..", swap: false, error: true },
    ];
  });

  // Error responses that htmx does not swap still show their message in #flash.
  document.addEventListener("htmx:responseError", function (event) {
    var flash = document.getElementById("flash");
    if (!flash) return;
    var xhr = event.detail.xhr;
    if (xhr && xhr.responseText && xhr.responseText.indexOf('id="flash"') !== -1) {
      var holder = document.createElement("div");
      holder.innerHTML = xhr.responseText;
      var incoming = holder.querySelector("#flash");
      if (incoming) flash.replaceWith(incoming);
    } else {
      flash.innerHTML = '<div class="alert alert-error" role="alert"></div>';
      flash.firstChild.textContent = "Something went wrong. Reload the page and try again.";
    }
  });

  // Confirmation for destructive buttons: data-confirm="Delete this deal?" on a form.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var message = form.getAttribute && form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  }, true);

  // Deal board: native HTML5 drag and drop. A drop sets the card's stage menu and fires its
  // change event, so the move goes through the same htmx form (with the CSRF header from
  // <body hx-headers>) as picking a stage by hand; the server re-renders the whole board.
  var dragged = null;
  function dropColumn(event) {
    return event.target.closest ? event.target.closest("[data-stage-drop]") : null;
  }
  document.addEventListener("dragstart", function (event) {
    var card = event.target.closest && event.target.closest("[data-deal-card]");
    if (!card) return;
    dragged = card;
    card.classList.add("dragging");
    event.dataTransfer.effectAllowed = "move";
    event.dataTransfer.setData("text/plain", card.id);
  });
  document.addEventListener("dragend", function () {
    if (dragged) dragged.classList.remove("dragging");
    dragged = null;
    document.querySelectorAll(".drop-target").forEach(function (el) { el.classList.remove("drop-target"); });
  });
  document.addEventListener("dragover", function (event) {
    var column = dragged && dropColumn(event);
    if (!column) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "move";
    column.classList.add("drop-target");
  });
  document.addEventListener("dragleave", function (event) {
    var column = dropColumn(event);
    if (column && !column.contains(event.relatedTarget)) column.classList.remove("drop-target");
  });
  document.addEventListener("drop", function (event) {
    var column = dropColumn(event);
    var card = dragged || document.getElementById(event.dataTransfer.getData("text/plain"));
    if (!column || !card) return;
    event.preventDefault();
    column.classList.remove("drop-target");
    var select = card.querySelector("select[name=stage]");
    if (!select || select.value === column.dataset.stageDrop) return;
    select.value = column.dataset.stageDrop;
    column.querySelector(".board-cards").prepend(card);  // show the move before the response
    select.dispatchEvent(new Event("change", { bubbles: true }));
  });
})();
