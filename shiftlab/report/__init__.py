"""Report: plots that take computed results and return figures, and the HTML report."""
