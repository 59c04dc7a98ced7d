// Keyboard shortcuts for the reader page: R / S answer, 1-5 confidence, Enter saves, Z shows the image 1:1 / enlarged.
// The form works without this script; it only adds keys and keeps a second click from sending twice.
(function () {
  var form = document.getElementById("answer");
  if (!form) { return; }
  var sent = false;
  var image = document.getElementById("image");
  var enlarged = image ? image.width : 0;
  function zoom() {
    if (!image || !image.naturalWidth) { return; }
    var size = image.width === enlarged ? image.naturalWidth : enlarged;
    image.width = size;
    image.height = size;
  }
  function pick(id) { var input = document.getElementById(id); if (input) { input.checked = true; } }
  document.addEventListener("keydown", function (event) {
    if (event.target.tagName === "TEXTAREA" || event.ctrlKey || event.metaKey || event.altKey) { return; }
    var key = event.key.toLowerCase();
    if (key === "r") { pick("call-real"); }
    else if (key === "s") { pick("call-synthetic"); }
    else if (key >= "1" && key <= "5") { pick("confidence-" + key); }
    else if (key === "enter") { event.preventDefault(); form.requestSubmit(); }
    else if (key === "z") { zoom(); }
    else { return; }
    event.preventDefault();
  });
  form.addEventListener("submit", function (event) {
    if (sent) { event.preventDefault(); return; }
    sent = true;
  });
})();
