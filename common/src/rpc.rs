//! The `google.rpc` messages OTLP uses for errors and retry hints: `Status` (the body of
//! OTLP/HTTP errors, and gRPC's `grpc-status-details-bin`) and `RetryInfo` (how long a
//! refused sender should wait before retrying).

use std::time::Duration;

use prost::Message;

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    /// gRPC status code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What went wrong.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Typed details (`google.protobuf.Any`).
    #[prost(message, repeated, tag = "3")]
    #[serde(skip)]
    pub details: Vec<Any>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Any {
    /// Type URL, e.g. [`RETRY_INFO_TYPE`].
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The encoded message.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RetryInfo {
    /// How long to wait.
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoDuration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds past the seconds.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// The type URL of `RetryInfo` inside an `Any`.
pub const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The retry delay carried in encoded `Status` details, if any.
pub fn retry_delay(status_details: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(status_details).ok()?;
    let any = status.details.iter().find(|d| d.type_url == RETRY_INFO_TYPE)?;
    let delay = RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay?;
    let nanos = u32::try_from(delay.nanos).ok()?;
    Some(Duration::new(u64::try_from(delay.seconds).ok()?, nanos))
}

/// An encoded `Status` with a `RetryInfo` asking to wait `delay`.
pub fn status_with_retry(code: i32, message: &str, delay: Duration) -> Vec<u8> {
    let info = RetryInfo {
        retry_delay: Some(ProtoDuration { seconds: delay.as_secs() as i64, nanos: delay.subsec_nanos() as i32 }),
    };
    RpcStatus {
        code,
        message: message.into(),
        details: vec![Any { type_url: RETRY_INFO_TYPE.into(), value: info.encode_to_vec() }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_info_round_trips_and_garbage_has_none() {
        let bytes = status_with_retry(8, "busy", Duration::from_millis(1500));
        assert_eq!(retry_delay(&bytes), Some(Duration::from_millis(1500)));
        assert_eq!(retry_delay(&RpcStatus { code: 8, message: "x".into(), details: vec![] }.encode_to_vec()), None);
        assert_eq!(retry_delay(&[0xff, 0x00, 0x13]), None);
    }
}
