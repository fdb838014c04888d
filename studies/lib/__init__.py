"""The studies' protocol library: what every study shares (see the package modules)."""
