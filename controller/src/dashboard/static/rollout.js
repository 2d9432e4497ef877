// Ballast dashboard: keeps the rollout page's progress live. Every two
// seconds it fetches the server-rendered fragment (/rollout/progress, same
// origin, under the session cookie) and swaps it in for #progress. The
// fragment is escaped by the server's templates; nothing here builds markup
// from text. It stops once the rollout is done or aborted, or on an error
// (the page then says so). Without JavaScript a <noscript> meta refresh
// reloads the page instead.
(function () {
  "use strict";
  var PERIOD_MS = 2000;

  function say(text) {
    var live = document.getElementById("live");
    if (live) {
      live.textContent = text;
    }
  }

  function tick() {
    var progress = document.getElementById("progress");
    if (!progress || progress.getAttribute("data-final") === "true") {
      say("The rollout has ended; this page no longer refreshes.");
      return;
    }
    fetch("/rollout/progress", { credentials: "same-origin", cache: "no-store" })
      .then(function (resp) {
        if (!resp.ok) {
          throw new Error("the dashboard answered " + resp.status);
        }
        return resp.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var next = doc.getElementById("progress");
        var here = document.getElementById("progress");
        if (!next || !here) {
          throw new Error("no progress in the answer");
        }
        here.replaceWith(document.importNode(next, true));
        say("Live: refreshed every " + PERIOD_MS / 1000 + " s.");
        setTimeout(tick, PERIOD_MS);
      })
      .catch(function (e) {
        say("Live updates stopped (" + e.message + "); reload the page.");
      });
  }

  say("Live: refreshed every " + PERIOD_MS / 1000 + " s.");
  setTimeout(tick, PERIOD_MS);
})();
