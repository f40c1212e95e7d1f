//! Load test of the chat service: bare against stacked, on the same seeded data and the same load.
