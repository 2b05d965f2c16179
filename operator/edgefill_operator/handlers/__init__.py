"""kopf handlers, one module per operation; each unpacks kopf's arguments,
calls one reconcile step and turns its outcome into Events. Nothing here
computes anything worth testing on its own."""
