//! Pressure snapshots: how many runners each flavor needs right now, rendered once for every
//! subscriber.
//!
//! A [`Pressure`] is immutable and shared (`Arc`) by every subscriber. It carries the map, the
//! generation that produced it, and every line a stream can send, rendered once when the
//! snapshot is built: the all-flavors map, each flavor on its own, and the empty map `{}` (a
//! single-flavor view of a flavor that has disappeared), each as a JSON value, an NDJSON line
//! and an SSE `pressure` event. They are all slices of one buffer, so thousands of subscribers
//! share one allocation per change and none of them serialises anything.

use std::collections::BTreeMap;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// Flavor name -> pressure. A `BTreeMap` so the JSON keys come out in a stable order.
pub type PressureMap = BTreeMap<String, u64>;

/// One view of a snapshot rendered in every wire format. Cloning is a reference-count bump.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    json: Bytes,
    ndjson: Bytes,
    sse: Bytes,
}

impl Rendered {
    /// The JSON object, e.g. `{"small":2}`, without a line end.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The JSON object followed by `\n`: one NDJSON line.
    pub fn ndjson(&self) -> &Bytes {
        &self.ndjson
    }

    /// One complete Server-Sent Event: `event: pressure`, `id: <generation>`, `data: <json>`,
    /// and the blank line that ends the event.
    pub fn sse(&self) -> &Bytes {
        &self.sse
    }
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Rendered")
            .field(&String::from_utf8_lossy(&self.json))
            .finish()
    }
}

/// Which part of a snapshot a client asked for: every flavor (`_` in the path) or one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Every flavor: `{"a":1,"b":2}`.
    All,
    /// One flavor: `{"a":1}`; `{}` while the flavor is absent from the snapshot.
    Flavor(String),
}

impl Filter {
    /// The filter for the `{name}` path segment of `/api/v1/flavors/{name}/pressure`: `_` means
    /// every flavor. Whether a named flavor exists (404 otherwise) is for the caller to check.
    pub fn from_path(name: &str) -> Self {
        if name == "_" {
            Self::All
        } else {
            Self::Flavor(name.to_owned())
        }
    }

    /// True when `old` and `new`, two snapshots of one broadcaster, look the same through this
    /// filter, i.e. a subscriber that has seen `old` has nothing new to be told.
    ///
    /// Cheap (it runs for every subscriber on every change): for every flavor it compares
    /// generations, since a broadcaster never gives a new generation to an unchanged map; for
    /// one flavor it compares that flavor's two values.
    pub fn same_view(&self, old: &Pressure, new: &Pressure) -> bool {
        match self {
            Self::All => old.generation == new.generation,
            Self::Flavor(name) => old.get(name) == new.get(name),
        }
    }

    fn label(&self) -> &str {
        match self {
            Self::All => "_",
            Self::Flavor(name) => name,
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// An immutable pressure snapshot with its pre-rendered lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pressure {
    flavors: PressureMap,
    generation: u64,
    all: Rendered,
    each: BTreeMap<String, Rendered>,
    absent: Rendered,
}

impl Pressure {
    /// Builds the snapshot of `flavors` at `generation` and renders every view of it.
    pub fn new(flavors: PressureMap, generation: u64) -> Self {
        // Everything goes into one buffer; the views are slices of it.
        let mut buffer = BytesMut::with_capacity(3 * 32 * (flavors.len() + 1));
        let id = generation.to_string();
        let mut spans = Vec::with_capacity(flavors.len());
        let all = render(&mut buffer, &id, |out| {
            serde_json::to_writer(out.writer(), &flavors).expect("a map of strings and integers");
        });
        for (name, value) in &flavors {
            spans.push(render(&mut buffer, &id, |out| {
                out.put_u8(b'{');
                serde_json::to_writer(out.writer(), name).expect("a string");
                out.put_u8(b':');
                serde_json::to_writer(out.writer(), value).expect("an integer");
                out.put_u8(b'}');
            }));
        }
        let absent = render(&mut buffer, &id, |out| out.put_slice(b"{}"));

        let buffer = buffer.freeze();
        let each = flavors
            .keys()
            .cloned()
            .zip(spans.iter().map(|span| span.slice(&buffer)))
            .collect();
        Self {
            all: all.slice(&buffer),
            absent: absent.slice(&buffer),
            each,
            flavors,
            generation,
        }
    }

    /// The map of this snapshot.
    pub fn flavors(&self) -> &PressureMap {
        &self.flavors
    }

    /// The generation of this snapshot: it grows by one with every change the broadcaster
    /// publishes, and is the SSE event `id`.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The pressure of `flavor`, if the snapshot has it.
    pub fn get(&self, flavor: &str) -> Option<u64> {
        self.flavors.get(flavor).copied()
    }

    /// The all-flavors view, `{"a":1,"b":2}`.
    pub fn all(&self) -> &Rendered {
        &self.all
    }

    /// The single-flavor view `{"a":1}`, if the snapshot has the flavor.
    pub fn flavor(&self, flavor: &str) -> Option<&Rendered> {
        self.each.get(flavor)
    }

    /// The view a `filter` selects; the empty map `{}` for a flavor the snapshot lacks.
    pub fn view(&self, filter: &Filter) -> &Rendered {
        match filter {
            Filter::All => &self.all,
            Filter::Flavor(name) => self.each.get(name).unwrap_or(&self.absent),
        }
    }
}

/// Where one view's three renderings sit in the snapshot buffer.
struct Span {
    json: (usize, usize),
    ndjson: (usize, usize),
    sse: (usize, usize),
}

impl Span {
    fn slice(&self, buffer: &Bytes) -> Rendered {
        let cut = |(start, end): (usize, usize)| buffer.slice(start..end);
        Rendered {
            json: cut(self.json),
            ndjson: cut(self.ndjson),
            sse: cut(self.sse),
        }
    }
}

/// Appends `json` + `\n` (the NDJSON line, whose first part is the bare JSON) and then the SSE
/// event carrying the same JSON.
fn render(buffer: &mut BytesMut, id: &str, write_json: impl Fn(&mut BytesMut)) -> Span {
    let start = buffer.len();
    write_json(buffer);
    let json_end = buffer.len();
    buffer.put_u8(b'\n');
    let ndjson_end = buffer.len();
    buffer.put_slice(b"event: pressure\nid: ");
    buffer.put_slice(id.as_bytes());
    buffer.put_slice(b"\ndata: ");
    write_json(buffer);
    buffer.put_slice(b"\n\n");
    Span {
        json: (start, json_end),
        ndjson: (start, ndjson_end),
        sse: (ndjson_end, buffer.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, u64)]) -> PressureMap {
        entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn renders_every_view_in_every_format() {
        let pressure = Pressure::new(map(&[("small", 2), ("large", 0)]), 7);
        assert_eq!(pressure.all().json().as_ref(), br#"{"large":0,"small":2}"#);
        assert_eq!(
            pressure.all().ndjson().as_ref(),
            b"{\"large\":0,\"small\":2}\n"
        );
        assert_eq!(
            pressure.all().sse().as_ref(),
            b"event: pressure\nid: 7\ndata: {\"large\":0,\"small\":2}\n\n"
        );
        let small = pressure.flavor("small").unwrap();
        assert_eq!(small.ndjson().as_ref(), b"{\"small\":2}\n");
        assert_eq!(
            small.sse().as_ref(),
            b"event: pressure\nid: 7\ndata: {\"small\":2}\n\n"
        );
        assert!(pressure.flavor("medium").is_none());
        let absent = pressure.view(&Filter::Flavor("medium".into()));
        assert_eq!(absent.ndjson().as_ref(), b"{}\n");
        assert_eq!(
            absent.sse().as_ref(),
            b"event: pressure\nid: 7\ndata: {}\n\n"
        );
    }

    #[test]
    fn rendered_lines_are_valid_json_even_for_odd_names() {
        let name = "quote\" back\\slash \u{e9} \n";
        let pressure = Pressure::new(map(&[(name, u64::MAX)]), 1);
        let all: PressureMap = serde_json::from_slice(pressure.all().json()).unwrap();
        assert_eq!(all, map(&[(name, u64::MAX)]));
        let one: PressureMap =
            serde_json::from_slice(pressure.flavor(name).unwrap().json()).unwrap();
        assert_eq!(one, map(&[(name, u64::MAX)]));
        // An SSE data line must not be split by a raw newline inside the JSON.
        let sse = std::str::from_utf8(pressure.all().sse()).unwrap();
        assert_eq!(sse.lines().filter(|l| l.starts_with("data: ")).count(), 1);
    }

    #[test]
    fn an_empty_map_renders_as_an_empty_object() {
        let pressure = Pressure::new(PressureMap::new(), 0);
        assert_eq!(pressure.all().ndjson().as_ref(), b"{}\n");
    }

    #[test]
    fn views_share_one_buffer() {
        let pressure = Pressure::new(map(&[("a", 1), ("b", 2)]), 3);
        let start = pressure.all.json().as_ptr() as usize;
        let end = pressure.absent.sse().as_ptr() as usize + pressure.absent.sse().len();
        for view in [pressure.flavor("a").unwrap(), pressure.flavor("b").unwrap()] {
            for bytes in [view.json(), view.ndjson(), view.sse()] {
                let at = bytes.as_ptr() as usize;
                assert!(
                    start <= at && at + bytes.len() <= end,
                    "{view:?} is not in the buffer"
                );
            }
        }
    }

    #[test]
    fn filters_compare_only_what_they_show() {
        let before = Pressure::new(map(&[("a", 1), ("b", 2)]), 1);
        let b_changed = Pressure::new(map(&[("a", 1), ("b", 3)]), 2);
        let a = Filter::from_path("a");
        assert_eq!(a, Filter::Flavor("a".into()));
        assert!(a.same_view(&before, &b_changed));
        assert!(!Filter::from_path("b").same_view(&before, &b_changed));
        assert!(!Filter::from_path("_").same_view(&before, &b_changed));
        assert!(Filter::All.same_view(&before, &before));
        let a_gone = Pressure::new(map(&[("b", 2)]), 3);
        assert!(!a.same_view(&before, &a_gone));
        assert_eq!(Filter::All.to_string(), "_");
    }
}
