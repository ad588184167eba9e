// ebb's dashboard: keeps the open page up to date from the server's event stream. The pages
// are complete without it; with it, a status change shows without a reload and without
// polling. The list gets each changed row as rendered on the server; the other pages fetch
// themselves again when something they show changed.
(function () {
  "use strict";
  var body = document.body;
  var live = body.getAttribute("data-live");
  var self = body.getAttribute("data-self") || location.pathname + location.search;
  var badge = document.getElementById("live");
  if (!live || !window.EventSource) return;

  var source = new EventSource(live);
  var opened = false;
  source.addEventListener("open", function () {
    setBadge(true);
    // A stream that opens again may have missed changes: fetch the page once.
    if (opened) refresh();
    opened = true;
  });
  source.addEventListener("error", function () { setBadge(false); });
  source.addEventListener("row", function (e) { row(JSON.parse(e.data)); });
  source.addEventListener("refresh", function () { refresh(); });

  function setBadge(on) {
    if (!badge) return;
    badge.textContent = on ? "live" : "reconnecting…";
    badge.className = on ? "live on" : "live";
  }

  // row replaces, adds or removes one row of the executions table.
  function row(d) {
    var rows = document.getElementById("rows");
    if (!rows) return;
    var old = document.getElementById(d.id);
    if (d.created) count("total", 1);
    if (d.remove) {
      if (old) {
        old.parentNode.removeChild(old);
        count("matching", -1);
      }
      return;
    }
    var tmp = document.createElement("tbody");
    tmp.innerHTML = d.html;
    var tr = tmp.firstElementChild;
    if (!tr) return;
    tr.classList.add("flash-row");
    if (old) {
      old.parentNode.replaceChild(tr, old);
    } else {
      var empty = rows.querySelector("tr.empty");
      if (empty) rows.removeChild(empty);
      rows.insertBefore(tr, rows.firstChild);
      count("matching", 1);
    }
  }

  function count(id, by) {
    var el = document.getElementById(id);
    if (el) el.textContent = String(Math.max(0, parseInt(el.textContent, 10) + by));
  }

  var pending = false, again = false;
  // refresh fetches the page and swaps its main content, keeping what the user typed.
  function refresh() {
    if (pending) { again = true; return; }
    pending = true;
    fetch(self, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var next = doc.getElementById("main");
        var main = document.getElementById("main");
        if (!next || !main) return;
        var typed = {};
        main.querySelectorAll("textarea").forEach(function (t) { typed[t.id] = t.value; });
        var focused = document.activeElement && document.activeElement.id;
        main.innerHTML = next.innerHTML;
        main.querySelectorAll("textarea").forEach(function (t) { if (typed[t.id]) t.value = typed[t.id]; });
        if (focused) { var f = document.getElementById(focused); if (f) f.focus(); }
        document.title = doc.title;
      })
      .catch(function () {})
      .then(function () {
        pending = false;
        if (again) { again = false; refresh(); }
      });
  }
})();
