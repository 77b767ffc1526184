// Recent alerts: on page 1, ask the JSON API every few seconds for alerts logged after the newest one
// shown (same filters) and put them at the top of the table, so new alerts appear without a reload.
(function () {
  "use strict";
  var table = document.getElementById("alerts");
  if (!table || table.dataset.page !== "1") { return; }
  var body = table.tBodies[0];
  var newest = parseInt(table.dataset.newest || "0", 10);
  var perPage = parseInt(new URLSearchParams(window.location.search).get("per_page") || "50", 10);
  var POLL_MS = 3000;

  function query() {
    var form = new FormData(document.getElementById("filters"));
    var params = new URLSearchParams();
    form.forEach(function (value, key) {
      if (String(value).trim() !== "" && key !== "page") { params.append(key, value); }
    });
    if (params.get("new_only")) { params.set("new_only", "true"); }
    params.set("after_id", String(newest));
    params.set("per_page", "500");
    return params;
  }

  function fmt(v, digits, sign) {
    if (v === null || v === undefined) { return "-"; }
    var s = Number(v).toFixed(digits);
    return sign && v >= 0 ? "+" + s : s;
  }

  function cell(tr, content) {
    var td = document.createElement("td");
    if (content instanceof Node) { td.appendChild(content); } else { td.textContent = content; }
    tr.appendChild(td);
    return td;
  }

  function row(a) {
    var tr = document.createElement("tr");
    tr.className = "alert fresh" + (a.is_good ? "" : " bad");
    tr.dataset.alertId = a.alert_id;
    tr.dataset.logId = a.log_id;
    cell(tr, String(a.alert_id));
    cell(tr, a.sent_at.slice(0, 19).replace("T", " "));
    var link = document.createElement("a");
    link.className = "object";
    link.href = "/objects/" + encodeURIComponent(a.object_name) + "?sighting=" + a.sighting_id;
    link.textContent = a.object_name;
    var td = cell(tr, link);
    if (a.is_new) {
      var tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "new";
      td.appendChild(document.createTextNode(" "));
      td.appendChild(tag);
    }
    cell(tr, fmt(a.mjd, 5));
    cell(tr, fmt(a.ra, 6));
    cell(tr, fmt(a.dec, 6, true));
    cell(tr, a.band);
    cell(tr, fmt(a.mag, 2));
    cell(tr, fmt(a.snr, 1));
    cell(tr, String(a.flags) + (a.is_good ? "" : " bad") + (a.is_positive ? "" : " fading"));
    ["new", "ref", "diff"].forEach(function (w) {
      if (!a.has_cutouts) { cell(tr, ""); return; }
      var img = document.createElement("img");
      img.className = "thumb";
      img.alt = w;
      img.src = "/api/sightings/" + a.sighting_id + "/cutouts/" + w + ".png?scale=1";
      cell(tr, img);
    });
    return tr;
  }

  function poll() {
    fetch("/api/alerts?" + query().toString(), { headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) { return; }
        // the API lists newest first: insert oldest first at the top so the newest ends up first
        for (var i = data.alerts.length - 1; i >= 0; i--) {
          body.insertBefore(row(data.alerts[i]), body.firstChild);
        }
        if (data.alerts.length) {
          var total = document.getElementById("total");
          total.textContent = String(parseInt(total.textContent, 10) + data.total);
          while (body.rows.length > perPage) { body.deleteRow(body.rows.length - 1); }
        }
        newest = Math.max(newest, data.newest_log_id);
        table.dataset.newest = String(newest);
      })
      .catch(function () { /* the server is restarting: try again next time */ })
      .then(function () { window.setTimeout(poll, POLL_MS); });
  }
  window.setTimeout(poll, POLL_MS);
})();
