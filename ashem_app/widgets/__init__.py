"""Small dashboard widgets; each one shows part of a `RunView` (`show(view)`)."""
