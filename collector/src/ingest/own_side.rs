//! The sidecar's own side of a hop, written back from its resource.
//!
//! A meshlens sidecar names its own workload once per export request, in the resource
//! (`service.name`, `service.namespace`, `service.version`, `meshlens.workload`), and on
//! each span and access-log record only the other side of the hop: `meshlens.destination.*`
//! on outbound records, `meshlens.source.*` on inbound ones. Four attributes of its own on
//! every record were about 15 % of its export bytes. Everything after ingest (edges, the
//! `spans` table's `source_*`/`destination_*` columns, the Jaeger API's tags, the logs API)
//! reads both ends of a hop from the record, so they are written back here, in key order.
//! A record that already names its own side (an older sidecar) is left as it is.

use std::sync::Arc;

use meshlens_common::semconv::{self, WorkloadKeys};

use crate::model::{Attributes, Key, Resource, Value, attr, key};

/// A sidecar's workload as the mesh attributes of either side of a hop.
struct OwnSide {
    /// As `meshlens.source.*`, for its outbound records; sorted by key, as each side is.
    source: Vec<(Key, Value)>,
    /// As `meshlens.destination.*`, for its inbound records.
    destination: Vec<(Key, Value)>,
}

impl OwnSide {
    /// The resource's workload, if it is a meshlens sidecar's (it has `meshlens.workload`).
    fn of(resource: &Resource) -> Option<Self> {
        let res = &resource.attributes;
        attr(res, semconv::RESOURCE_KEYS.workload)?;
        let side = |keys: &WorkloadKeys| {
            let mut pairs = (keys.all().into_iter().zip(semconv::RESOURCE_KEYS.all()))
                .filter_map(|(to, from)| Some((key(to), attr(res, from)?.clone())))
                .collect::<Vec<_>>();
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            pairs
        };
        Some(Self { source: side(&semconv::SOURCE_KEYS), destination: side(&semconv::DESTINATION_KEYS) })
    }
}

/// Fills in the own side of sidecar records as they are converted, one resource's workload
/// read once for the records that share it.
#[derive(Default)]
pub(super) struct Completer {
    /// The last resource seen and its workload, if it is a sidecar's.
    last: Option<(Arc<Resource>, Option<OwnSide>)>,
}

impl Completer {
    /// `resource`'s workload as either side of a hop, if it is a sidecar's; read once for
    /// the records that share the resource.
    fn own_side(&mut self, resource: &Arc<Resource>) -> Option<&OwnSide> {
        if !matches!(&self.last, Some((seen, _)) if Arc::ptr_eq(seen, resource)) {
            self.last = Some((resource.clone(), OwnSide::of(resource)));
        }
        self.last.as_ref().and_then(|(_, own)| own.as_ref())
    }

    /// The attributes [`complete`](Self::complete) may add to a record of `resource`: room
    /// the converter leaves in each record's list, so that writing the own end back does not
    /// grow it (a reallocation and a copy of every attribute, 6 % of the collector's samples
    /// under a sidecar's telemetry).
    pub(super) fn room(&mut self, resource: &Arc<Resource>) -> usize {
        self.own_side(resource).map_or(0, |own| own.source.len().max(own.destination.len()))
    }

    /// Writes the own side of one record (attributes sorted by key, from `resource`) back
    /// into it, when the record is a sidecar's and does not name it.
    pub(super) fn complete(&mut self, attributes: &mut Attributes, resource: &Arc<Resource>) {
        let Some(own) = self.own_side(resource) else { return };
        // Attributes are sorted by key: one binary search for the direction, one for where the
        // own end goes, then a step or two per key (this runs for every record ingested).
        let direction = attributes.binary_search_by(|(k, _)| k.as_str().cmp(semconv::DIRECTION)).ok();
        let (prefix, side) = match direction.and_then(|i| attributes[i].1.as_str()) {
            Some("outbound") => (semconv::SOURCE, &own.source),
            Some("inbound") => (semconv::DESTINATION, &own.destination),
            _ => return,
        };
        let Some((first, _)) = side.first() else { return };
        let mut at = attributes.partition_point(|(k, _)| k < first);
        let names_it = |k: &Key| k.as_str().strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.'));
        if attributes.get(at).is_some_and(|(k, _)| names_it(k)) {
            return;
        }
        attributes.reserve(side.len());
        for (k, v) in side {
            while attributes.get(at).is_some_and(|(existing, _)| existing <= k) {
                at += 1;
            }
            attributes.insert(at, (k.clone(), v.clone()));
            at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(attributes: &[(&str, &str)]) -> Arc<Resource> {
        let attributes = attributes.iter().map(|(k, v)| (key(k), Value::Str((*v).into()))).collect();
        Arc::new(Resource { service: "checkout".into(), attributes })
    }

    fn sidecar() -> Arc<Resource> {
        resource(&[
            ("meshlens.workload", "checkout-v2"),
            ("service.name", "checkout"),
            ("service.namespace", "shop"),
            ("service.version", "v2"),
        ])
    }

    fn record(pairs: &[(&str, &str)]) -> Attributes {
        let mut a: Attributes = pairs.iter().map(|(k, v)| (key(k), Value::Str((*v).into()))).collect();
        a.sort_by(|x, y| x.0.cmp(&y.0));
        a
    }

    fn text(a: &Attributes) -> Vec<(String, String)> {
        a.iter().map(|(k, v)| (k.as_str().to_owned(), v.as_str().unwrap_or("?").to_owned())).collect()
    }

    #[test]
    fn outbound_records_get_their_source_and_inbound_ones_their_destination_in_key_order() {
        let res = sidecar();
        let mut c = Completer::default();
        let mut out = record(&[("meshlens.destination.service", "payments"), ("meshlens.direction", "outbound"), ("url.path", "/pay")]);
        c.complete(&mut out, &res);
        let mut inb = record(&[("meshlens.direction", "inbound"), ("meshlens.source.service", "frontend")]);
        c.complete(&mut inb, &res);
        assert_eq!(
            text(&out),
            [
                ("meshlens.destination.service", "payments"),
                ("meshlens.direction", "outbound"),
                ("meshlens.source.namespace", "shop"),
                ("meshlens.source.service", "checkout"),
                ("meshlens.source.version", "v2"),
                ("meshlens.source.workload", "checkout-v2"),
                ("url.path", "/pay"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(
            text(&inb),
            [
                ("meshlens.destination.namespace", "shop"),
                ("meshlens.destination.service", "checkout"),
                ("meshlens.destination.version", "v2"),
                ("meshlens.destination.workload", "checkout-v2"),
                ("meshlens.direction", "inbound"),
                ("meshlens.source.service", "frontend"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn records_naming_their_own_side_and_records_of_other_senders_are_left_alone() {
        let mut c = Completer::default();
        let res = sidecar();
        for named in ["meshlens.source.service", "meshlens.source.workload", "meshlens.source.namespace"] {
            let older = record(&[("meshlens.direction", "outbound"), (named, "legacy"), ("url.path", "/")]);
            let mut a = older.clone();
            c.complete(&mut a, &res);
            assert_eq!(text(&a), text(&older));
        }

        // An SDK's resource has no `meshlens.workload`; an SDK span has no direction.
        let sdk = resource(&[("service.name", "checkout")]);
        let claimed = record(&[("meshlens.direction", "outbound")]);
        let mut a = claimed.clone();
        c.complete(&mut a, &sdk);
        assert_eq!(text(&a), text(&claimed));
        let plain = record(&[("http.route", "/pay")]);
        let mut a = plain.clone();
        c.complete(&mut a, &sidecar());
        assert_eq!(text(&a), text(&plain));
    }

    #[test]
    fn each_record_takes_its_own_resource() {
        let other = resource(&[("meshlens.workload", "cart-v1"), ("service.name", "cart")]);
        let mut c = Completer::default();
        let (first, second) = (sidecar(), other);
        let mut a = record(&[("meshlens.direction", "outbound")]);
        c.complete(&mut a, &first);
        let mut b = record(&[("meshlens.direction", "outbound")]);
        c.complete(&mut b, &second);
        assert_eq!(attr(&a, "meshlens.source.service").and_then(Value::as_str), Some("checkout"));
        assert_eq!(attr(&b, "meshlens.source.service").and_then(Value::as_str), Some("cart"));
        assert_eq!(attr(&b, "meshlens.source.workload").and_then(Value::as_str), Some("cart-v1"));
        assert!(attr(&b, "meshlens.source.version").is_none(), "no service.version in the resource");
    }

    #[test]
    fn a_record_given_the_room_is_completed_in_place() {
        let mut c = Completer::default();
        let (res, sdk) = (sidecar(), resource(&[("service.name", "checkout")]));
        assert_eq!((c.room(&res), c.room(&sdk)), (4, 0));
        let pairs = [("meshlens.destination.service", "payments"), ("meshlens.direction", "outbound"), ("url.path", "/pay")];
        let mut a = Attributes::with_capacity(pairs.len() + c.room(&res));
        a.extend(record(&pairs));
        let before = a.as_ptr();
        c.complete(&mut a, &res);
        assert_eq!(a.len(), 7);
        assert_eq!(a.as_ptr(), before, "written back without growing the list");
    }
}
