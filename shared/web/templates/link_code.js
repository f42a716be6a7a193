// The approval link carries its one-time code after "#": browsers never send that part to a server, so
// it stays out of request logs and telemetry. Copy it into the form, then drop it from the address bar.
(function () {
  var code = new URLSearchParams(location.hash.slice(1)).get("token");
  var field = document.getElementById("token");
  if (code && field) {
    field.value = code;
    document.getElementById("link-code").hidden = true;
    history.replaceState(null, "", location.pathname + location.search);
  }
})();
