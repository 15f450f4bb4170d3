//! [`Again`]: what an upstream pool keeps of a request to send it again by itself, when the
//! upstream can be known to have done nothing with it (an HTTP/2 stream refused or left
//! out of a `GOAWAY`) or the request may be repeated (a safe or keyed one whose idle
//! HTTP/1.1 connection was closed under it). Its body is kept as it streams, up to
//! [`REPLAY_BYTES`], and freed once the pool has its answer.

use http_body::Body as _;
use http_body_util::BodyExt as _;

use super::{RESENT, Request, Resolution};
use crate::{body, replay::Replay};

/// Most request body bytes kept to send a request again: a larger body goes once (Linkerd
/// keeps as much for its retries).
pub const REPLAY_BYTES: usize = 64 * 1024;

/// What a request needs to go again: a copy of its head and its body's replay (none for a
/// bodiless request), taken as it is first sent.
pub struct Again {
    head: http::request::Parts,
    replay: Option<Replay>,
    resolution: Option<Resolution>,
}

impl Again {
    /// Keeps what `req` needs to go again; with `req` as it is first sent.
    pub fn new(req: Request) -> (Self, Request) {
        let (parts, body) = req.into_parts();
        let (replay, body) = if body.is_end_stream() {
            (None, body)
        } else {
            let (replay, first) = Replay::new(body, REPLAY_BYTES);
            (Some(replay), first.boxed_unsync())
        };
        // The extensions stay with the request sent (hyper reads an extended CONNECT's).
        let mut head = http::Request::new(()).into_parts().0;
        head.method = parts.method.clone();
        head.uri = parts.uri.clone();
        head.version = parts.version;
        head.headers = parts.headers.clone();
        let resolution = parts.extensions.get::<Resolution>().cloned();
        (Self { head, replay, resolution }, http::Request::from_parts(parts, body))
    }

    /// The request again from the start, unless its body outgrew what is kept of it.
    pub fn request_again(&self) -> Option<Request> {
        let body = match &self.replay {
            Some(replay) => replay.body()?.boxed_unsync(),
            None => body::full(bytes::Bytes::new()),
        };
        Some(http::Request::from_parts(self.head.clone(), body))
    }

    /// Notes on the request's span that it was sent again, and why.
    pub fn note(&self, why: String) {
        if let Some(resolution) = &self.resolution {
            resolution.note(RESENT, why);
        }
    }
}
