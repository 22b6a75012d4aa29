// Threadline's only first-party script: htmx hardening and small progressive enhancements.
// No inline scripts anywhere (CSP script-src 'self').
(function () {
  "use strict";

  // A user without a time zone setting gets the browser's, once (times then read locally).
  var zoneUrl = document.body && document.body.getAttribute("data-time-zone-url");
  var zone = window.Intl && Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (zoneUrl && zone) {
    var token = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"];
    var body = new URLSearchParams({ time_zone: zone });
    fetch(zoneUrl, { method: "POST", body: body, headers: { "X-CSRFToken": token },
                     credentials: "same-origin" })
      .then(function (response) {
        // This page showed UTC times: show it again in the new zone (UTC needs no redraw).
        if (response.status === 204 && zone !== "UTC") window.location.reload();
      });
  }

  // Phone-sized screens fold the navigation behind the Menu button of the top bar.
  document.addEventListener("click", function (event) {
    var toggle = event.target.closest && event.target.closest(".menu-toggle");
    if (!toggle) return;
    var open = toggle.getAttribute("aria-expanded") !== "true";
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
    toggle.closest(".topbar").classList.toggle("menu-open", open);
  });

  // A mail frame takes the height of its content. The frame runs no script (its sandbox has
  // no allow-scripts); this page reads the content's height, which allow-same-origin permits,
  // when the frame loads and whenever its content changes size (late images, a wider window).
  function fitMailFrame(frame) {
    var doc;
    try { doc = frame.contentDocument; } catch (error) { return; }
    if (!doc || !doc.documentElement) return;
    var height = Math.ceil(doc.documentElement.getBoundingClientRect().height);
    if (height > 0) frame.parentElement.style.height = height + "px";
  }
  function watchMailFrame(frame) {
    if (frame.dataset.fitted) return;
    var doc = frame.contentDocument;
    if (!doc || doc.readyState !== "complete" || !doc.body) return;
    frame.dataset.fitted = "1";
    fitMailFrame(frame);
    if (window.ResizeObserver) {
      new ResizeObserver(function () { fitMailFrame(frame); }).observe(doc.body);
    }
  }
  document.addEventListener("load", function (event) {
    var frame = event.target;
    if (frame.matches && frame.matches(".mail-frame iframe")) {
      delete frame.dataset.fitted;  // a new document (srcdoc replaced)
      watchMailFrame(frame);
    }
  }, true);
  // Frames that finished loading before this script ran.
  document.querySelectorAll(".mail-frame iframe").forEach(watchMailFrame);

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
  // A submit button may carry its own data-confirm (e.g. Delete in the mail toolbar).
  // The question opens in the page's <dialog> (focus moves in and back, Esc cancels), not
  // the browser's confirm(); on OK the form is submitted again, past this check.
  var confirmed = null;
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var submitter = event.submitter;
    var source = submitter && submitter.hasAttribute("data-confirm") ? submitter : form;
    var message = source.getAttribute && source.getAttribute("data-confirm");
    var dialog = document.getElementById("confirm-dialog");
    if (!message || !dialog) return;
    if (confirmed === form) {
      confirmed = null;
      return;
    }
    // Stopping propagation here (capture phase) also keeps htmx from sending the form.
    event.preventDefault();
    event.stopPropagation();
    document.getElementById("confirm-text").textContent = message;
    document.getElementById("confirm-ok").textContent =
      source.getAttribute("data-confirm-label") || "OK";
    dialog.returnValue = "";
    dialog.onclose = function () {
      if (submitter && submitter.focus) submitter.focus();
      if (dialog.returnValue !== "ok") return;
      confirmed = form;
      if (form.requestSubmit) form.requestSubmit(submitter || undefined);
      else form.submit();
    };
    dialog.showModal();
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

  // Deal board, keyboard: in a card's stage menu the arrow keys (and type-ahead) only pick a
  // stage; Enter or Space moves the deal, Escape or leaving the menu puts the choice back.
  // Chromium fires "change" on each arrow key of a closed <select>, which htmx would send.
  var BROWSE_KEYS = ["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "Home", "End", "PageUp", "PageDown"];
  function stageSelect(target) {
    return target && target.matches && target.matches("select.stage-select") ? target : null;
  }
  function savedStage(select) {
    var saved = Array.prototype.filter.call(select.options, function (o) { return o.defaultSelected; })[0];
    return saved ? saved.value : select.value;
  }
  document.addEventListener("keydown", function (event) {
    var select = stageSelect(event.target);
    if (!select || event.ctrlKey || event.metaKey || event.altKey) return;
    if (BROWSE_KEYS.indexOf(event.key) !== -1 || (event.key.length === 1 && event.key !== " ")) {
      select.setAttribute("data-browsing", "");
    } else if ((event.key === "Enter" || event.key === " ") && select.hasAttribute("data-browsing")) {
      event.preventDefault();
      select.removeAttribute("data-browsing");
      if (select.value !== savedStage(select)) select.dispatchEvent(new Event("change", { bubbles: true }));
    } else if (event.key === "Escape" && select.hasAttribute("data-browsing")) {
      event.preventDefault();
      select.removeAttribute("data-browsing");
      select.value = savedStage(select);
    }
  });
  document.addEventListener("change", function (event) {
    var select = stageSelect(event.target);
    if (select && select.hasAttribute("data-browsing")) event.stopPropagation();  // htmx waits
  }, true);
  document.addEventListener("focusout", function (event) {
    var select = stageSelect(event.target);
    if (!select || !select.hasAttribute("data-browsing")) return;
    select.removeAttribute("data-browsing");
    select.value = savedStage(select);
  });
  // Say what moved, and give focus back to the moved card's menu in the new board.
  var boardMove = null;
  document.addEventListener("htmx:beforeRequest", function (event) {
    var form = event.target.closest && event.target.closest(".stage-form");
    var select = form && form.querySelector("select.stage-select");
    if (!select) return;
    var card = form.closest("[data-deal-card]");
    boardMove = {
      id: select.id,
      focused: document.activeElement === select,
      text: "Moved " + card.querySelector(".deal-card-title").textContent.trim() + " to " +
            select.options[select.selectedIndex].text,
    };
  });
  document.addEventListener("htmx:afterSettle", function (event) {
    if (!boardMove || !event.detail.xhr) return;
    var move = boardMove;
    boardMove = null;
    var announce = document.getElementById("board-announce");
    if (announce && event.detail.xhr.status < 300) announce.textContent = move.text;
    var select = document.getElementById(move.id);
    if (move.focused && select) select.focus();
  });

  // ------------------------------------------------------------------ Mail tab
  // Keyboard: j/k move, Enter/o open, x select, e archive, # delete, u unread, l reply later,
  // / search, ? help. Single-key shortcuts are ignored while typing in a field.
  var currentThreadId = null;
  var currentIndex = 0;

  function mailRows() {
    return Array.prototype.slice.call(document.querySelectorAll("#mail-list .mail-row"));
  }

  function setCurrent(row) {
    mailRows().forEach(function (other) {
      other.classList.remove("is-current");
      other.removeAttribute("aria-current");
    });
    if (!row) return;
    row.classList.add("is-current");
    row.setAttribute("aria-current", "true");  // not told by colour alone (WCAG 1.4.1)
    currentThreadId = row.getAttribute("data-thread-id");
    currentIndex = mailRows().indexOf(row);
    row.scrollIntoView({ block: "nearest" });
  }

  function currentRow() {
    return document.querySelector("#mail-list .mail-row.is-current");
  }

  function move(step) {
    var rows = mailRows();
    if (!rows.length) return;
    var index = rows.indexOf(currentRow());
    index = index === -1 ? 0 : Math.min(rows.length - 1, Math.max(0, index + step));
    setCurrent(rows[index]);
  }

  // Returns false when the toolbar has no such action (e.g. "later" inside Reply later).
  function runAction(action) {
    var form = document.getElementById("mail-bulk");
    if (!form) return false;
    var button = form.querySelector('button[name="action"][value="' + action + '"]');
    if (!button) return false;
    var checked = document.querySelectorAll("#mail-list .mail-check:checked");
    if (!checked.length) {
      var row = currentRow();
      if (!row) return true;
      row.querySelector(".mail-check").checked = true;
    }
    // A real click, so htmx sends the button's action value (it tracks the clicked submitter).
    button.click();
    return true;
  }

  // The shortcuts help is a modal <dialog>: it takes focus, keeps Tab inside, closes on Esc
  // and gives focus back to whatever opened it.
  var helpOpener = null;
  function toggleHelp(force) {
    var help = document.getElementById("mail-help");
    if (!help) return;
    var open = force === undefined ? !help.open : force;
    if (open && !help.open) {
      helpOpener = document.activeElement;
      help.showModal();
    } else if (!open && help.open) {
      help.close();
    }
  }
  document.addEventListener("close", function (event) {
    if (event.target.id !== "mail-help") return;
    if (helpOpener && helpOpener.focus && document.contains(helpOpener)) helpOpener.focus();
    helpOpener = null;
  }, true);

  // Tab and Shift+Tab cycle inside an open modal dialog (Chromium would let focus leave the
  // page once past its last control).
  document.addEventListener("keydown", function (event) {
    var dialog = event.key === "Tab" && document.querySelector("dialog[open]");
    if (!dialog || !dialog.matches(":modal")) return;
    var stops = Array.prototype.filter.call(
      dialog.querySelectorAll("a[href], button, input, select, textarea, [tabindex]"),
      function (el) { return !el.disabled && el.tabIndex >= 0 && el.getClientRects().length; });
    if (!stops.length) return;
    var edge = event.shiftKey ? stops[0] : stops[stops.length - 1];
    if (document.activeElement === edge || !dialog.contains(document.activeElement)) {
      event.preventDefault();
      (event.shiftKey ? stops[stops.length - 1] : stops[0]).focus();
    }
  });

  // A personal setting turns single-key shortcuts off (WCAG 2.1.4): keys that type a
  // character then do nothing here; Enter and Escape keep their usual meaning.
  function singleKeyOff(event) {
    return event.key.length === 1 && document.body.getAttribute("data-keyboard-shortcuts") === "off";
  }

  function isTyping(target) {
    var tag = target && target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (target && target.isContentEditable);
  }

  function dialogOpen() {
    // Shortcuts wait while a modal dialog (a confirmation) has the keyboard.
    return !!document.querySelector("dialog[open]");
  }

  document.addEventListener("keydown", function (event) {
    if (!document.getElementById("mail-list") || dialogOpen()) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "Escape") {
      toggleHelp(false);
      if (isTyping(event.target)) event.target.blur();
      return;
    }
    if (isTyping(event.target) || singleKeyOff(event)) return;
    var row = currentRow();
    switch (event.key) {
      case "j": move(1); break;
      case "k": move(-1); break;
      case "o":
      case "Enter":
        if (!row) return;
        row.querySelector(".mail-row-link").click();
        break;
      case "x":
        if (!row) return;
        var box = row.querySelector(".mail-check");
        box.checked = !box.checked;
        break;
      case "e": runAction("archive"); break;
      case "#": runAction("delete"); break;
      case "u": runAction("unread"); break;
      case "l": runAction("later") || runAction("not_later"); break;
      case "/": document.getElementById("mail-q").focus(); break;
      case "?": toggleHelp(); break;
      default: return;
    }
    event.preventDefault();
  });

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (target.closest && target.closest("[data-mail-help]")) toggleHelp();
    if (target.id === "mail-check-all") {
      document.querySelectorAll("#mail-list .mail-check").forEach(function (box) {
        box.checked = target.checked;
      });
    }
  });

  // Conversation page: e archive, l reply later (or done), # delete, j/k older/newer
  // conversation, Esc back to the list.
  document.addEventListener("keydown", function (event) {
    var form = document.getElementById("conversation-actions");
    if (!form || event.ctrlKey || event.metaKey || event.altKey || isTyping(event.target) ||
        dialogOpen() || singleKeyOff(event)) return;
    function press(action) {
      var button = form.querySelector('button[name="action"][value="' + action + '"]');
      if (button) button.click();
      return !!button;
    }
    switch (event.key) {
      case "e": press("archive"); break;
      case "l": press("later") || press("not_later"); break;
      case "#": press("delete"); break;
      case "Escape": form.querySelector("[data-conversation-back]").click(); break;
      case "j":
      case "k":
        var step = form.querySelector('[data-step="' + (event.key === "j" ? "older" : "newer") + '"]');
        if (step) step.click();
        break;
      default: return;
    }
    event.preventDefault();
  });

  // Compose shortcuts: c on any page (the Mail tab's Compose button where there is one); r, a, f on a
  // conversation answer its newest message (the last [data-reply-kind] link of the page).
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || isTyping(event.target) || dialogOpen() ||
        singleKeyOff(event)) return;
    var kinds = { r: "reply", a: "reply_all", f: "forward" };
    var target = null;
    if (event.key === "c" && !document.getElementById("compose-form")) {
      target = document.querySelector('[data-shortcut="c"]');
      var composeUrl = document.body.getAttribute("data-compose-url");
      if (!target && composeUrl) {
        event.preventDefault();
        window.location.assign(composeUrl);
        return;
      }
    } else if (kinds[event.key]) {
      var links = document.querySelectorAll('[data-reply-kind="' + kinds[event.key] + '"]');
      target = links.length ? links[links.length - 1] : null;
    }
    if (!target) return;
    event.preventDefault();
    target.click();
  });

  // Live search and filters: the title names the search and a polite live region says how
  // many conversations were found (WCAG 4.1.3), after each swap of the results.
  document.addEventListener("htmx:afterSettle", function (event) {
    var results = document.getElementById("mail-results");
    if (!results) return;
    document.title = results.getAttribute("data-page-title") || document.title;
    var source = event.detail.requestConfig && event.detail.requestConfig.elt;
    var announce = document.getElementById("mail-announce");
    if (announce && source && source.closest && source.closest("#mail-search")) {
      announce.textContent = results.getAttribute("data-result-summary") || "";
    }
  });

  // After the list is swapped (action, search, filter), keep the cursor near where it was.
  document.addEventListener("htmx:afterSettle", function () {
    var rows = mailRows();
    if (!rows.length || currentThreadId === null || currentRow()) return;
    var same = document.querySelector('#mail-list .mail-row[data-thread-id="' + currentThreadId + '"]');
    setCurrent(same || rows[Math.min(currentIndex, rows.length - 1)]);
  });
})();
