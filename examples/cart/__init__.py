"""The cart example: a shop whose sessions have an `auth`, a `cart` and a `feature/video` part."""
