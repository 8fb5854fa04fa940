//! Edge policies applied before routing: connection-level limits (header deadline, header
//! size, idle keep-alive), request hygiene, forwarding headers and the client address.
//! CORS, rate limits and IP rules join here later.

pub mod client;
pub mod forwarding;
pub mod hygiene;
pub mod listener;
