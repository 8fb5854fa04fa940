/* PredictHealth — progressive enhancement only. Every page works without this file.
   - flash messages get a close button;
   - the password field gets a show/hide button;
   - a submitted form disables its submit button to avoid double submissions. */
(function () {
  "use strict";

  document.documentElement.classList.add("js");

  function ready(fn) {
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", fn);
    } else {
      fn();
    }
  }

  function enhanceFlash() {
    var items = document.querySelectorAll(".flash");
    Array.prototype.forEach.call(items, function (flash) {
      var btn = document.createElement("button");
      btn.type = "button";
      btn.className = "flash-close";
      btn.setAttribute("aria-label", "Cerrar aviso");
      btn.textContent = "\u00d7";
      btn.addEventListener("click", function () {
        var list = flash.parentNode;
        flash.parentNode.removeChild(flash);
        if (list && !list.querySelector(".flash")) {
          list.parentNode.removeChild(list);
        }
        var main = document.getElementById("main");
        if (main) { main.focus(); }
      });
      flash.appendChild(btn);
    });
  }

  function enhancePassword() {
    var input = document.getElementById("password");
    if (!input || !input.parentNode.classList.contains("password-wrap")) { return; }
    var wrap = input.parentNode;
    var btn = document.createElement("button");
    btn.type = "button";
    btn.className = "password-toggle";
    btn.id = "password-toggle";
    btn.setAttribute("aria-controls", "password");
    btn.textContent = "Mostrar";
    btn.setAttribute("aria-label", "Mostrar contraseña");
    btn.addEventListener("click", function () {
      var show = input.type === "password";
      input.type = show ? "text" : "password";
      btn.textContent = show ? "Ocultar" : "Mostrar";
      btn.setAttribute("aria-label", show ? "Ocultar contraseña" : "Mostrar contraseña");
      input.focus();
    });
    wrap.classList.add("has-toggle");
    wrap.appendChild(btn);

    // Never submit with the password visible in the field history of the page.
    var form = input.form;
    if (form) {
      form.addEventListener("submit", function () {
        input.type = "password";
      });
    }
  }

  function guardSubmit() {
    var forms = document.querySelectorAll("form[method='post'], form[method='POST']");
    Array.prototype.forEach.call(forms, function (form) {
      form.addEventListener("submit", function (event) {
        if (form.getAttribute("data-submitting") === "true") {
          event.preventDefault();
          return;
        }
        form.setAttribute("data-submitting", "true");
        var btn = form.querySelector("button[type='submit']");
        if (btn) {
          btn.setAttribute("aria-disabled", "true");
          btn.setAttribute("data-label", btn.textContent);
          btn.textContent = btn.id === "login-submit" ? "Entrando\u2026" : "Enviando\u2026";
        }
      });
    });
    // Coming back with the browser's back button must not leave the form locked.
    window.addEventListener("pageshow", function () {
      Array.prototype.forEach.call(forms, function (form) {
        form.removeAttribute("data-submitting");
        var btn = form.querySelector("button[type='submit']");
        if (btn && btn.getAttribute("data-label")) {
          btn.textContent = btn.getAttribute("data-label");
          btn.removeAttribute("aria-disabled");
        }
      });
    });
  }

  ready(function () {
    enhanceFlash();
    enhancePassword();
    guardSubmit();
  });
})();
