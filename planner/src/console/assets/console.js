// The console's only script: keeps the overview's pressure column current from the planner's
// pressure stream (Server-Sent Events through EventSource; the browser reconnects by itself).
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  var status = document.getElementById("live-status");
  if (!status || !window.EventSource) {
    return;
  }
  var source = new EventSource(status.getAttribute("data-stream"));
  source.addEventListener("open", function () {
    status.textContent = "Pressure: live.";
    status.setAttribute("data-state", "live");
  });
  source.addEventListener("error", function () {
    status.textContent = "Pressure: reconnecting to the live stream…";
    status.setAttribute("data-state", "reconnecting");
  });
  source.addEventListener("pressure", function (event) {
    var pressures;
    try {
      pressures = JSON.parse(event.data);
    } catch (_) {
      return;
    }
    var cells = document.querySelectorAll("[data-pressure-flavor]");
    for (var i = 0; i < cells.length; i++) {
      var name = cells[i].getAttribute("data-pressure-flavor");
      if (Object.prototype.hasOwnProperty.call(pressures, name)) {
        cells[i].textContent = String(pressures[name]);
      }
    }
    status.setAttribute("data-generation", event.lastEventId);
  });
});
