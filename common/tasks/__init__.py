"""Tasks: prompt formatting, data loaders, label parsing for financial sentiment (and later AML)."""
