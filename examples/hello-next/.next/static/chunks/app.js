document.querySelector("h1").title = "served from .next/static";
