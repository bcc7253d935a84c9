// filesync dashboard: live parts by polling server-rendered (escaped) fragments, and the
// install dialog's showIf visibility. No framework: the pages work without JS too.
document.querySelectorAll('[data-poll]').forEach(function (el) {
  var url = el.getAttribute('data-poll');
  setInterval(function () {
    fetch(url, { credentials: 'same-origin' }).then(function (r) {
      if (r.ok && !r.redirected) { return r.text(); }
    }).then(function (html) { if (html !== undefined) { el.innerHTML = html; } });
  }, 2000);
});
function applyShowIf() {
  document.querySelectorAll('[data-show-if]').forEach(function (el) {
    var cond = el.getAttribute('data-show-if');
    if (!cond) { return; }
    var ok = cond.split(',').every(function (kv) {
      var p = kv.split('='), input = document.querySelector('input[name="' + p[0] + '"]:checked');
      return input && input.value === p[1];
    });
    el.hidden = !ok;
  });
}
document.querySelectorAll('input[type=radio]').forEach(function (r) { r.addEventListener('change', applyShowIf); });
