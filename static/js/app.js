// Threadline's only first-party script: htmx hardening and small progressive enhancements.
// No inline scripts anywhere (CSP script-src 'self').
(function () {
  "use strict";

  // Lets CSS hide the no-JS fallbacks (.nojs-only) once scripts run.
  document.documentElement.classList.add("js");

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
})();
