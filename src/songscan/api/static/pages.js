// Behaviour of the dashboard pages, as a file (the pages' CSP allows no inline script).
"use strict";

// <form data-confirm="question">: ask before submitting.
for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
}

// <button data-copy="element-id">: copy that input's value to the clipboard.
for (const button of document.querySelectorAll("button[data-copy]")) {
  button.addEventListener("click", () => {
    const source = document.getElementById(button.dataset.copy);
    navigator.clipboard.writeText(source.value).then(() => {
      button.textContent = "Copied";
    });
  });
}
