//! The W3C trace context a record carries (`traceparent`) and the sampling decision taken from
//! it: parent-based, with a ratio for requests that carry none. Pure: the processor decides per
//! request whether to record spans before creating any, so an unsampled request costs a header
//! lookup and nothing else.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;

use crate::config::TraceSettings;

/// A parsed `traceparent` header (version 00): `00-<trace id>-<parent span id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace's id (16 bytes, not all zero).
    pub trace_id: [u8; 16],
    /// The id of the span the record was sent from (8 bytes, not all zero).
    pub span_id: [u8; 8],
    /// The trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` for anything W3C says to ignore (wrong length or
    /// version 00 with extra fields, non-hex or upper-case digits, all-zero ids, version ff).
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        let text = std::str::from_utf8(value).ok()?.trim();
        let mut parts = text.split('-');
        let version = parts.next()?;
        let (trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || !is_lower_hex(version) {
            return None;
        }
        // Version 00 has exactly four fields; a later version may append more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id: [u8; 16] = hex_bytes(trace_id)?;
        let span_id: [u8; 8] = hex_bytes(span_id)?;
        let [flags] = hex_bytes::<1>(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// Whether the sender recorded its span (and asks the receivers to record theirs).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The header's value, version 00.
    pub fn format(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }

    /// The remote span context it stands for (the parent of the receiver's spans).
    pub fn remote_span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        )
    }

    /// A context whose span is the remote sender's: the parent of a span made for the record.
    pub fn parent_context(&self) -> Context {
        Context::new().with_remote_span_context(self.remote_span_context())
    }

    /// The header standing for a local span: its ids and flags.
    pub fn of_span(context: &SpanContext) -> TraceParent {
        TraceParent {
            trace_id: context.trace_id().to_bytes(),
            span_id: context.span_id().to_bytes(),
            flags: context.trace_flags().to_u8(),
        }
    }
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !is_lower_hex(text) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

/// Which requests get spans: those whose `traceparent` is sampled, and of those without one
/// (or with one that does not parse) the given share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Off: nothing is recorded.
    pub enabled: bool,
    /// The share of requests without a trace context that start a trace.
    pub root_ratio: f64,
}

impl Sampling {
    /// Records nothing.
    pub const OFF: Sampling = Sampling {
        enabled: false,
        root_ratio: 0.0,
    };

    /// The sampling `traces` asks for.
    pub fn of(traces: &TraceSettings) -> Sampling {
        Sampling {
            enabled: traces.enabled,
            root_ratio: traces.root_sample_ratio,
        }
    }

    /// Whether to record a span for a record carrying `parent`; `key` is a hash of something
    /// that differs between records (partition and offset), which picks the share of roots.
    pub fn decide(&self, parent: Option<&TraceParent>, key: u64) -> bool {
        if !self.enabled {
            return false;
        }
        match parent {
            Some(parent) => parent.sampled(),
            // The hash's top 53 bits as a fraction in [0, 1).
            None => ((key >> 11) as f64 / (1u64 << 53) as f64) < self.root_ratio,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_parses_and_formats_back() {
        let parent = TraceParent::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(parent.trace_id[0], 0x4b);
        assert_eq!(parent.span_id[7], 0xb7);
        assert!(parent.sampled());
        assert_eq!(parent.format(), EXAMPLE);
        let context = parent.remote_span_context();
        assert!(context.is_remote() && context.is_sampled() && context.is_valid());
        assert_eq!(TraceParent::of_span(&context), parent);
    }

    #[test]
    fn headers_w3c_says_to_ignore_are_not_parsed() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad:?}");
        }
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        assert!(
            TraceParent::parse(later.as_bytes()).is_some(),
            "a later version may append fields"
        );
    }

    #[test]
    fn the_parent_decides_and_roots_follow_the_ratio() {
        let mut parent = TraceParent::parse(EXAMPLE.as_bytes()).unwrap();
        let on = Sampling {
            enabled: true,
            root_ratio: 0.0,
        };
        assert!(on.decide(Some(&parent), 0));
        parent.flags = 0;
        assert!(
            !on.decide(Some(&parent), 0),
            "an unsampled parent is followed"
        );
        assert!(!on.decide(None, 0), "a ratio of 0 starts no trace");
        let all = Sampling {
            root_ratio: 1.0,
            ..on
        };
        assert!(
            all.decide(None, u64::MAX),
            "a ratio of 1 starts every trace"
        );
        assert!(
            !all.decide(Some(&parent), 0),
            "even then an unsampled parent is followed"
        );
        parent.flags = 1;
        assert!(
            !Sampling::OFF.decide(Some(&parent), 0),
            "off records nothing"
        );
    }

    #[test]
    fn a_ratio_samples_about_that_share_of_roots() {
        let tenth = Sampling {
            enabled: true,
            root_ratio: 0.1,
        };
        let sampled = (0..100_000u64)
            .filter(|n| tenth.decide(None, crate::state::order_hash(&n.to_le_bytes())))
            .count();
        assert!((9_000..11_000).contains(&sampled), "{sampled}");
    }

    proptest! {
        #[test]
        fn any_valid_header_round_trips(trace in any::<[u8; 16]>(), span in any::<[u8; 8]>(), flags in any::<u8>()) {
            prop_assume!(trace != [0; 16] && span != [0; 8]);
            let parent = TraceParent { trace_id: trace, span_id: span, flags };
            prop_assert_eq!(TraceParent::parse(parent.format().as_bytes()), Some(parent));
        }
    }
}
