"""EdgeFill cache node: stores, serves, fills and peers content at an edge site."""
