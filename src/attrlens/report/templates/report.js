/* attrlens report viewer: recolours the input by the selected output tokens' rows of the
   per-output-token matrix. Reads numbers from the JSON data block; writes text only through
   textContent/title (never innerHTML). */
(function (rootId) {
  "use strict";
  var root = document.getElementById(rootId);
  var dataEl = document.getElementById(rootId + "-data");
  if (!root || !dataEl) { return; }
  var data = JSON.parse(dataEl.textContent);
  var POS = [67, 147, 195], NEG = [214, 96, 77];
  function colour(v, s) {
    if (v === null || v === undefined || !isFinite(v) || !(s > 0)) { return ""; }
    var t = Math.max(-1, Math.min(1, v / s));
    var c = t >= 0 ? POS : NEG, a = Math.abs(t), out = [];
    for (var k = 0; k < 3; k++) { out.push(Math.floor(255 + (c[k] - 255) * a + 0.5)); }
    return "rgb(" + out.join(", ") + ")";
  }
  // Python's "%+.4g" (the report's numbers): 4 significant digits rounded half to even,
  // exponent form below 1e-4 and from 1e4, trailing zeros dropped
  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) { return "n/a"; }
    v = Number(v);
    var sign = (v < 0 || (v === 0 && 1 / v < 0)) ? "-" : "+", a = Math.abs(v);
    if (a === 0) { return sign + "0"; }
    var p = a.toExponential(40).split("e"), d = p[0].replace(".", ""), e = Number(p[1]);
    var n = Number(d.slice(0, 4)), rest = d.slice(4), half = "5";
    while (half.length < rest.length) { half += "0"; }
    if (rest > half || (rest === half && n % 2 === 1)) {
      n += 1;
      if (n === 10000) { n = 1000; e += 1; }
    }
    var digits = String(n), s;
    if (e < -4 || e >= 4) {
      s = (digits.charAt(0) + "." + digits.slice(1)).replace(/\.?0+$/, "")
        + "e" + (e < 0 ? "-" : "+") + (Math.abs(e) < 10 ? "0" : "") + Math.abs(e);
    } else if (e >= 3) {
      s = digits;
    } else if (e >= 0) {
      s = (digits.slice(0, e + 1) + "." + digits.slice(e + 1)).replace(/\.?0+$/, "");
    } else {
      s = ("0." + new Array(-e).join("0") + digits).replace(/\.?0+$/, "");
    }
    return sign + s;
  }
  var feats = root.querySelectorAll(".alr-feat");
  var legendLo = root.querySelector(".alr-legend-lo");
  var legendHi = root.querySelector(".alr-legend-hi");
  var status = root.querySelector(".alr-status-text");
  function paint(values, scale, what) {
    for (var k = 0; k < feats.length; k++) {
      var el = feats[k], i = Number(el.getAttribute("data-i")), v = values[i];
      el.style.backgroundColor = colour(v, scale);
      el.setAttribute("data-v", v === null || v === undefined ? "" : String(v));
      el.title = "#" + i + " " + el.getAttribute("data-label") + ": " + fmt(v);
    }
    if (legendLo) { legendLo.textContent = fmt(-scale); }
    if (legendHi) { legendHi.textContent = fmt(scale); }
    if (status) { status.textContent = what; }
    root.setAttribute("data-colouring", what);
  }
  var sel = [];
  function markSelected() {
    var nodes = root.querySelectorAll("[data-t]");
    for (var k = 0; k < nodes.length; k++) {
      var on = sel.indexOf(Number(nodes[k].getAttribute("data-t"))) >= 0;
      if (nodes[k].classList.contains("alr-otok") || nodes[k].classList.contains("alr-col")) {
        nodes[k].classList.toggle("alr-sel", on);
        nodes[k].setAttribute("aria-pressed", on ? "true" : "false");
      }
    }
  }
  function showSelection() {
    markSelected();
    if (!sel.length || !data.matrix) {
      paint(data.scores, data.scale, "all output tokens (the scores)");
      return;
    }
    var n = data.matrix.length, vals = [];
    for (var i = 0; i < n; i++) {
      var sum = 0, cnt = 0;
      for (var q = 0; q < sel.length; q++) {
        var x = data.matrix[i][sel[q]];
        if (x !== null && isFinite(x)) { sum += x; cnt += 1; }
      }
      vals.push(cnt ? sum / cnt : null);
    }
    var names = sel.map(function (t) { return "#" + t + " \u201c" + data.cols[t].trim() + "\u201d"; });
    var what = (sel.length === 1 ? "output " : "mean of outputs ") + names.join(", ");
    paint(vals, data.mscale, what);
  }
  function choose(t, add) {
    if (!data.matrix || !(t >= 0)) { return; }
    if (add) {
      var at = sel.indexOf(t);
      if (at >= 0) { sel.splice(at, 1); } else { sel.push(t); }
    } else {
      sel = (sel.length === 1 && sel[0] === t) ? [] : [t];
    }
    showSelection();
  }
  root.addEventListener("click", function (ev) {
    var el = ev.target.closest ? ev.target.closest("[data-t]") : null;
    if (el && root.contains(el)) {
      choose(Number(el.getAttribute("data-t")), ev.shiftKey || ev.ctrlKey || ev.metaKey);
      return;
    }
    var reset = ev.target.closest ? ev.target.closest(".alr-reset") : null;
    if (reset && root.contains(reset)) { sel = []; showSelection(); }
  });
  root.addEventListener("keydown", function (ev) {
    var el = ev.target;
    if ((ev.key === "Enter" || ev.key === " ") && el.hasAttribute && el.hasAttribute("data-t")) {
      ev.preventDefault();
      choose(Number(el.getAttribute("data-t")), ev.shiftKey);
    }
  });
  root.setAttribute("data-ready", "1");
})
