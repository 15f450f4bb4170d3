//! Counts the messages of a gRPC body as its bytes pass, for the records of gRPC calls
//! (Istio's `istio_request_messages_total`, OpenTelemetry's `rpc.server.requests_per_rpc`):
//! a message is a five-byte prefix (a compressed flag and a four-byte big-endian length)
//! and that many bytes, and a prefix may be split across data frames. A message counts once
//! its prefix has passed; the bytes are read, never changed or held. gRPC-Web frames its
//! trailers the same way, flag `0x80`: they are not a message. Its text form
//! (`application/grpc-web-text`) is base64 and has no framing to read: it is not counted.

/// Whether a call of `content_type` has its messages counted: gRPC, and binary gRPC-Web.
pub fn countable(content_type: &str) -> bool {
    content_type.starts_with("application/grpc") && !content_type.starts_with("application/grpc-web-text")
}

/// The count of one body's messages, and where its framing stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCounter {
    messages: u64,
    /// Bytes of the current message still to pass.
    rest: u64,
    /// Bytes of the current prefix passed (0 to 4).
    prefix: u8,
    /// The current prefix's flag byte.
    flag: u8,
    /// The length its passed prefix bytes give so far.
    length: u32,
}

/// The bytes of a message's prefix.
const PREFIX: u8 = 5;

/// The flag bit of gRPC-Web's trailers frame.
const TRAILERS: u8 = 0x80;

impl MessageCounter {
    /// Reads the next `data` of the body.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.rest > 0 {
                let passed = usize::try_from(self.rest).map_or(data.len(), |rest| rest.min(data.len()));
                self.rest -= passed as u64;
                data = &data[passed..];
                continue;
            }
            // A prefix byte: the flag first, then the length's four.
            if self.prefix == 0 {
                self.flag = data[0];
            } else {
                self.length = self.length << 8 | u32::from(data[0]);
            }
            self.prefix += 1;
            data = &data[1..];
            if self.prefix == PREFIX {
                // gRPC-Web's trailers frame is not a message.
                self.messages += u64::from(self.flag & TRAILERS == 0);
                self.rest = u64::from(self.length);
                (self.prefix, self.length) = (0, 0);
            }
        }
    }

    /// Messages whose prefix has passed.
    pub fn messages(&self) -> u64 {
        self.messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lengths` framed as gRPC messages (uncompressed, bodies of `x`).
    fn framed(lengths: &[u32]) -> Vec<u8> {
        let mut body = Vec::new();
        for &length in lengths {
            body.push(0);
            body.extend_from_slice(&length.to_be_bytes());
            body.extend(std::iter::repeat_n(b'x', length as usize));
        }
        body
    }

    #[test]
    fn messages_are_counted_however_the_body_is_cut_into_frames() {
        let body = framed(&[0, 3, 70_000, 1]);
        for frame in [1, 2, 4, 5, 6, 7, 1000, body.len()] {
            let mut counter = MessageCounter::default();
            for chunk in body.chunks(frame) {
                counter.feed(chunk);
            }
            assert_eq!(counter.messages(), 4, "frames of {frame} bytes");
        }
    }

    #[test]
    fn grpc_webs_trailers_frame_is_no_message_and_its_text_form_is_not_read() {
        let mut body = framed(&[3, 4]);
        let trailers = b"grpc-status:0\r\n";
        body.push(0x80);
        body.extend_from_slice(&(trailers.len() as u32).to_be_bytes());
        body.extend_from_slice(trailers);
        let mut counter = MessageCounter::default();
        counter.feed(&body);
        assert_eq!(counter.messages(), 2);
        assert!(countable("application/grpc") && countable("application/grpc+proto") && countable("application/grpc-web+proto"));
        assert!(!countable("application/grpc-web-text") && !countable("application/json"));
    }

    #[test]
    fn a_message_counts_once_its_prefix_has_passed() {
        let body = framed(&[10]);
        let mut counter = MessageCounter::default();
        counter.feed(&body[..4]);
        assert_eq!(counter.messages(), 0, "a prefix cut short");
        counter.feed(&body[4..6]);
        assert_eq!(counter.messages(), 1, "its body still on its way");
        counter.feed(&body[6..]);
        counter.feed(&framed(&[u32::MAX])[..5]);
        assert_eq!(counter.messages(), 2, "a length of 4 GiB is only bytes to let pass");
    }
}
