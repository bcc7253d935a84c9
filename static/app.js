// filesync dashboard. The pages work without JavaScript; this adds: live parts (polled,
// server-rendered and escaped fragments, swapped in only when they changed), the log view's
// follow / pause / level filter / search, the install dialog as a modal with its showIf
// fields, confirmations before destructive actions, copy buttons and the path tester.
// No framework and no inline script (the CSP forbids it).
(function () {
  'use strict';

  function get(url) {
    return fetch(url, { credentials: 'same-origin', headers: { 'X-Requested-With': 'fetch' } }).then(function (r) {
      // A redirect means the session ended (to the login page): keep what is shown.
      if (r.ok && !r.redirected) { return r.text(); }
      return undefined;
    });
  }

  // --- Live fragments ------------------------------------------------------------------
  document.querySelectorAll('[data-poll]').forEach(function (el) {
    var url = el.getAttribute('data-poll');
    var every = parseInt(el.getAttribute('data-poll-every') || '2000', 10);
    var last = el.innerHTML;
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) { return; }
      busy = true;
      get(url).then(function (html) {
        busy = false;
        if (html === undefined || html === last) { return; }
        // Keep the focused control and the ticked boxes across the swap.
        var focused = document.activeElement && el.contains(document.activeElement) ? document.activeElement.id : null;
        last = html;
        el.innerHTML = html;
        if (focused && document.getElementById(focused)) { document.getElementById(focused).focus(); }
        el.dispatchEvent(new CustomEvent('fragment-updated', { bubbles: true }));
      }, function () { busy = false; });
    }, every);
  });

  // --- Log view: follow the newest line unless the reader scrolled up ------------------
  var logRoot = document.querySelector('[data-log-poll]');
  if (logRoot) {
    var paused = false;
    var following = true;
    var url = logRoot.getAttribute('data-log-poll');
    var every = parseInt(logRoot.getAttribute('data-poll-every') || '2000', 10);
    var pauseButton = document.getElementById('log-pause');
    var search = document.getElementById('log-search');
    var followNote = document.getElementById('log-following');
    var box = function () { return document.getElementById('lsyncd-log'); };
    var atBottom = function (b) { return b.scrollTop + b.clientHeight >= b.scrollHeight - 4; };
    var applyFilters = function () {
      var b = box();
      if (!b) { return; }
      var shown = {};
      document.querySelectorAll('.level-filter').forEach(function (c) { shown[c.value] = c.checked; });
      var q = (search && search.value || '').toLowerCase();
      b.querySelectorAll('.line').forEach(function (line) {
        var level = (line.className.match(/level-(\w+)/) || [])[1] || 'normal';
        var ok = shown[level] !== false && (!q || line.textContent.toLowerCase().indexOf(q) >= 0);
        line.hidden = !ok;
      });
    };
    var showFollow = function () {
      if (!followNote) { return; }
      followNote.textContent = paused ? 'paused: not refreshing' : (following ? 'following the newest line' : 'scrolled up: not following (scroll to the end to follow again)');
    };
    var watchScroll = function () {
      var b = box();
      if (!b || b.dataset.watched) { return; }
      b.dataset.watched = '1';
      b.addEventListener('scroll', function () { following = atBottom(b); showFollow(); });
    };
    var toBottom = function () { var b = box(); if (b) { b.scrollTop = b.scrollHeight; } };
    applyFilters();
    toBottom();
    watchScroll();
    showFollow();
    var last = logRoot.innerHTML;
    setInterval(function () {
      if (paused || document.hidden) { return; }
      get(url).then(function (html) {
        if (html === undefined || html === last || paused) { return; }
        last = html;
        var old = box();
        var keep = old ? old.scrollTop : 0;
        var doc = new DOMParser().parseFromString('<div>' + html + '</div>', 'text/html');
        // The log box itself stays in place (its scroll position is the reader's); the
        // parts around it and its lines are replaced.
        ['log-head', 'lsyncd-log', 'log-rest'].forEach(function (id) {
          var mine = document.getElementById(id), theirs = doc.getElementById(id);
          if (mine && theirs) { mine.innerHTML = theirs.innerHTML; }
        });
        applyFilters();
        if (following) { toBottom(); } else if (old) { old.scrollTop = keep; }
      });
    }, every);
    if (pauseButton) {
      pauseButton.addEventListener('click', function () {
        paused = !paused;
        pauseButton.textContent = paused ? 'Resume' : 'Pause';
        pauseButton.setAttribute('aria-pressed', paused ? 'true' : 'false');
        showFollow();
      });
    }
    document.querySelectorAll('.level-filter').forEach(function (c) { c.addEventListener('change', applyFilters); });
    if (search) { search.addEventListener('input', applyFilters); }
  }

  // --- Confirmations -------------------------------------------------------------------
  var confirmDialog = document.getElementById('confirm-dialog');
  document.addEventListener('submit', function (ev) {
    var form = ev.target;
    var button = ev.submitter;
    var text = (button && button.getAttribute('data-confirm')) || form.getAttribute('data-confirm');
    if (!text || form.dataset.confirmed === '1' || !confirmDialog || !confirmDialog.showModal) { return; }
    ev.preventDefault();
    document.getElementById('confirm-text').textContent = text;
    confirmDialog.returnValue = '';
    confirmDialog.onclose = function () {
      if (confirmDialog.returnValue !== 'yes') { return; }
      // The form may have been swapped out by a live refresh meanwhile: submit a copy
      // of it (same action, same fields, the button's name and value).
      var copy = document.createElement('form');
      copy.method = 'post';
      copy.action = form.getAttribute('action');
      copy.dataset.confirmed = '1';
      copy.hidden = true;
      var add = function (name, value) {
        var i = document.createElement('input');
        i.type = 'hidden'; i.name = name; i.value = value;
        copy.appendChild(i);
      };
      new FormData(form).forEach(function (value, name) { add(name, value); });
      if (button && button.name) { add(button.name, button.value); }
      document.body.appendChild(copy);
      copy.submit();
    };
    confirmDialog.showModal();
    document.getElementById('confirm-no').focus();
  });

  // --- Dialogs -------------------------------------------------------------------------
  document.addEventListener('click', function (ev) {
    var open = ev.target.closest('[data-open-dialog]');
    if (open) {
      var d = document.getElementById(open.getAttribute('data-open-dialog'));
      if (d && d.showModal && !d.open) { d.showModal(); }
    }
    var close = ev.target.closest('[data-close-dialog]');
    if (close) {
      var c = document.getElementById(close.getAttribute('data-close-dialog'));
      if (c) { c.close(); }
    }
  });
  // A dialog the server rendered open (a refused submission) becomes modal, with its
  // error summary focused.
  document.querySelectorAll('dialog[data-modal][open]').forEach(function (d) {
    if (!d.showModal) { return; }
    d.close();
    d.showModal();
    var summary = d.querySelector('.error-summary');
    if (summary) { summary.focus(); }
  });

  // --- The install dialog's showIf fields ------------------------------------------------
  function applyShowIf() {
    document.querySelectorAll('[data-show-if]').forEach(function (el) {
      var cond = el.getAttribute('data-show-if');
      if (!cond) { return; }
      var ok = cond.split(',').every(function (kv) {
        var p = kv.split('='), input = document.querySelector('input[name="' + p[0] + '"]:checked');
        return input && input.value === p[1];
      });
      el.hidden = !ok;
      // A hidden field is not sent; it must not block the form either.
      el.querySelectorAll('input').forEach(function (i) {
        if (!ok && i.required) { i.required = false; i.dataset.required = '1'; }
        if (ok && i.dataset.required === '1') { i.required = true; }
      });
    });
  }
  document.querySelectorAll('input[type=radio]').forEach(function (r) { r.addEventListener('change', applyShowIf); });
  applyShowIf();

  // --- Copy buttons --------------------------------------------------------------------
  document.addEventListener('click', function (ev) {
    var b = ev.target.closest('[data-copy]');
    if (!b) { return; }
    var text = b.getAttribute('data-copy');
    var done = function () { var t = b.textContent; b.textContent = 'Copied'; setTimeout(function () { b.textContent = t; }, 1500); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done);
    } else {
      var area = document.createElement('textarea');
      area.value = text;
      document.body.appendChild(area);
      area.select();
      try { document.execCommand('copy'); done(); } catch (e) { /* the text stays selectable */ }
      area.remove();
    }
  });

  // --- Path tester ---------------------------------------------------------------------
  var tester = document.getElementById('path-test');
  var testButton = document.getElementById('path-test-button');
  if (tester && testButton) {
    var run = function () {
      var syncPath = document.getElementById('field-path');
      var q = '?path=' + encodeURIComponent(tester.value) + '&sync_path=' + encodeURIComponent(syncPath ? syncPath.value : '');
      get(tester.getAttribute('data-path-test') + q).then(function (html) {
        if (html !== undefined) { document.getElementById('path-test-result').innerHTML = html; }
      });
    };
    testButton.addEventListener('click', run);
    tester.addEventListener('keydown', function (ev) { if (ev.key === 'Enter') { ev.preventDefault(); run(); } });
  }

  // --- Conflict center: select all -------------------------------------------------------
  var all = document.getElementById('select-all');
  if (all) {
    all.addEventListener('change', function () {
      document.querySelectorAll('.select-copy').forEach(function (c) { c.checked = all.checked; });
    });
  }
})();
