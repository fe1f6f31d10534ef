// Refresh control for the task list. The list polls with hx-trigger="every 5s".
// This file cancels those requests while the tab is hidden and refreshes once
// when it becomes visible again. A trigger filter such as
// "every 5s [document.visibilityState === 'visible']" would need eval, which
// the Content-Security-Policy forbids.
(function () {
  "use strict";

  document.addEventListener("htmx:beforeRequest", function (event) {
    var element = event.detail.elt;
    if (element.hasAttribute("data-poll") && document.visibilityState !== "visible") {
      event.preventDefault();
    }
  });

  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState !== "visible" || typeof htmx === "undefined") {
      return;
    }
    document.querySelectorAll("[data-poll]").forEach(function (element) {
      htmx.trigger(element, "refresh");
    });
  });
})();
