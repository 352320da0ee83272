//! kubesim's request parsing: paths, query strings and selectors, as any
//! client of its API server can send them.
#![no_main]

use k3sfleet_kubesim::api::request::{Query, parse_target};
use k3sfleet_kubesim::selector::{FieldQuery, LabelQuery};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str)| {
    let (path, query) = input;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let [group, version, rest @ ..] = segments.as_slice() {
        let _ = parse_target(group, version, rest);
    }
    let _ = Query::parse(Some(query));
    let _ = LabelQuery::parse(query);
    let _ = FieldQuery::parse(query);
});
