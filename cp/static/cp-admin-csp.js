// The admin panel runs under a Content-Security-Policy without inline scripts (cp/web/security.py).
// Flask-Admin's templates use inline onclick handlers for bulk actions and row deletes;
// cp/templates/admin/actions.html and admin/model/row_actions.html replace them with data
// attributes handled here. Links to "javascript:" URLs (Flask-Admin's placeholders) never navigate.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!target || !target.closest) {
      return;
    }
    var action = target.closest("[data-cp-action]");
    if (action) {
      event.preventDefault();
      if (window.modelActions) {
        window.modelActions.execute(action.getAttribute("data-cp-action"));
      }
      return;
    }
    var confirmable = target.closest("[data-cp-confirm]");
    if (confirmable) {
      if (!window.confirm(confirmable.getAttribute("data-cp-confirm"))) {
        event.preventDefault();
      }
      return;
    }
    var link = target.closest("a[href^='javascript:']");
    if (link) {
      event.preventDefault();
    }
  }, true);  // capture: before Flask-Admin's and Bootstrap's handlers, which may stop the event
})();
