//! The realistic-access workload (`make bench`, issue 21): a state topic of orders aged over 35
//! days of the default lifecycle, and passes of requests that touch mostly the last few days'
//! orders (or, to compare, every order alike).
//!
//! Every order's age and stage follow from its number alone, so the state writer and every
//! request pass agree without sharing anything but the order count. The orders are cut into
//! [`SLOTS`] slots (`n % SLOTS`); each pass takes the requests of one slot, so no pass touches an
//! order another pass has moved, and every pass meets the same mix.

use orderflow::machine::{
    Definition, OrderState, RecentRequest, RecordedOutcome, StateId, TransitionRequest,
};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// How far back the oldest order was created.
const DAYS: i64 = 35;
/// Passes the orders are cut into (see the module doc).
pub const SLOTS: u64 = 12;
/// The lifecycle's steps, in order; an order's stage is its index here.
const STAGES: [&str; 5] = [
    "Confirmed",
    "Shipped",
    "OutForDelivery",
    "Delivered",
    "Returned",
];
/// The transition from each stage to the next.
const NEXT: [&str; 4] = ["ship", "out_for_delivery", "deliver", "return"];
/// Per mille of delivered orders a skewed pass sends a late `return` for.
const RETURNS_PER_MILLE: u64 = 5;
/// A new order's `confirm` follows its `create` this many requests later (payment takes a while).
const CONFIRM_AFTER: usize = 2_000;

/// Which orders a pass's requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Access {
    /// Mostly the last three days' orders (in transit), new orders created and confirmed, and a
    /// few late returns of delivered orders, as a store's traffic is.
    Skewed,
    /// One request for every fifth order of the slot, whatever its age: nothing is hot.
    Uniform,
}

/// splitmix64: a well-mixed number from `n` (ages and choices without a random generator).
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The id of aged order `n`.
pub fn order_id(n: u64) -> String {
    format!("aged-{n:09}")
}

/// How long ago order `n` was created: spread evenly over the 35 days, less an hour.
fn age_ms(n: u64) -> i64 {
    (mix(n) % (DAYS * DAY_MS - HOUR_MS) as u64) as i64
}

/// Order `n`'s stage and when it reached it: a day per step in transit, delivered on day three —
/// or later for the oldest, so that no order's 30-day return window ends within the next six
/// hours (an order whose window ended has expired and is gone from the topic).
fn stage(n: u64, now_ms: i64) -> (usize, i64) {
    let age = age_ms(n);
    let created = now_ms - age;
    match age / DAY_MS {
        0 => (0, created + (age / 2).min(10 * 60_000)),
        1 => (1, created + DAY_MS),
        2 => (2, created + 2 * DAY_MS),
        _ => (
            3,
            (created + 3 * DAY_MS).max(now_ms - 30 * DAY_MS + 6 * HOUR_MS),
        ),
    }
}

/// The state record (key, value) of order `n` as of `now_ms`.
pub fn state_record(definition: &Definition, n: u64, now_ms: i64) -> (Vec<u8>, Vec<u8>) {
    let id = |name: &str| -> StateId {
        definition
            .state_id(name)
            .unwrap_or_else(|| panic!("the default lifecycle has no state {name}"))
    };
    let (stage, updated_at_ms) = stage(n, now_ms);
    let pending = id("Pending");
    let mut path = vec![(pending, pending), (pending, id("Confirmed"))];
    for step in 1..=stage {
        path.push((id(STAGES[step - 1]), id(STAGES[step])));
    }
    let recent = path
        .iter()
        .enumerate()
        .map(|(k, &(from, to))| RecentRequest {
            request_id: uuid::Uuid::from_u64_pair(n, k as u64),
            outcome: RecordedOutcome::Accepted,
            from,
            to,
            version: k as u64 + 1,
        })
        .collect::<Vec<_>>();
    let state = OrderState {
        state: id(STAGES[stage]),
        version: recent.len() as u64,
        created_at_ms: now_ms - age_ms(n),
        updated_at_ms,
        // The codec keeps the last five.
        recent: recent[recent.len().saturating_sub(5)..].to_vec(),
        parked: Vec::new(),
    };
    let order_id = order_id(n);
    let mut value = Vec::with_capacity(256);
    orderflow::codec::encode_order_state(definition, &order_id, &state, &mut value);
    (order_id.into_bytes(), value)
}

fn request(order_id: String, transition: &str, n: u64, k: u64) -> TransitionRequest {
    TransitionRequest {
        request_id: uuid::Uuid::from_u64_pair(n | 1 << 63, k),
        order_id,
        transition: transition.to_string(),
        expected_version: None,
        requested_at_ms: 0,
        source: "bench-aged".into(),
        attributes: Default::default(),
    }
}

/// The requests of pass `slot` over `orders` aged orders (all of them valid next steps, so every
/// one is accepted), in the order they are sent.
pub fn requests(orders: u64, slot: u64, access: Access, now_ms: i64) -> Vec<TransitionRequest> {
    let mut main = Vec::new();
    for n in (slot..orders).step_by(SLOTS as usize) {
        let (stage, _) = stage(n, now_ms);
        let wanted = match access {
            Access::Skewed => stage < 3 || mix(n ^ 0x5EED) % 1000 < RETURNS_PER_MILLE,
            Access::Uniform => mix(n ^ 0xF1FE) % 5 == 0,
        };
        if wanted {
            main.push(request(order_id(n), NEXT[stage], n, 1));
        }
    }
    let mut new_orders = Vec::new();
    if access == Access::Skewed {
        // About one order a day is created for every three in transit.
        let transit = main.iter().filter(|r| r.transition != "return").count() as u64;
        for k in 0..transit / 3 {
            let id = format!("aged-new-{slot:02}-{k:08}");
            main.push(request(
                id.clone(),
                "create",
                orders + slot * 10_000_000 + k,
                0,
            ));
            new_orders.push(id);
        }
    }
    // A fixed shuffle (Fisher–Yates on mixed numbers) spreads the kinds over the pass.
    for i in (1..main.len()).rev() {
        let j = (mix(slot << 40 | i as u64) % (i as u64 + 1)) as usize;
        main.swap(i, j);
    }
    let mut confirms: std::collections::BTreeMap<usize, Vec<TransitionRequest>> =
        Default::default();
    let mut sequence = Vec::with_capacity(main.len() + new_orders.len());
    for (i, r) in main.into_iter().enumerate() {
        if r.transition == "create" {
            confirms.entry(i + CONFIRM_AFTER).or_default().push(request(
                r.order_id.clone(),
                "confirm",
                r.request_id.as_u64_pair().0,
                2,
            ));
        }
        sequence.push(r);
        if let Some(due) = confirms.remove(&i) {
            sequence.extend(due);
        }
    }
    sequence.extend(confirms.into_values().flatten());
    sequence
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition() -> Definition {
        Definition::load(std::path::Path::new("machines/order-lifecycle.toml")).unwrap()
    }

    #[test]
    fn every_request_of_a_pass_is_a_valid_next_step_of_its_order() {
        let definition = definition();
        let now = 1_800_000_000_000;
        let orders = 20_000;
        let states: std::collections::HashMap<String, OrderState> = (0..orders)
            .map(|n| {
                let (key, value) = state_record(&definition, n, now);
                let (id, state) =
                    orderflow::codec::decode_order_state(&definition, &value).unwrap();
                assert_eq!(id.as_bytes(), key.as_slice());
                (id, state)
            })
            .collect();
        for access in [Access::Skewed, Access::Uniform] {
            let mut created = std::collections::HashSet::new();
            let pass = requests(orders, 3, access, now);
            assert!(pass.len() > 100, "{access:?}: {}", pass.len());
            for r in &pass {
                let transition =
                    definition.transition(definition.transition_id(&r.transition).unwrap());
                match states.get(&r.order_id) {
                    Some(state) => assert!(
                        transition.from.contains(&state.state),
                        "{} cannot {} from its state",
                        r.order_id,
                        r.transition
                    ),
                    None if r.transition == "create" => assert!(created.insert(&r.order_id)),
                    None => assert!(created.contains(&r.order_id), "confirm after create"),
                }
            }
        }
    }

    #[test]
    fn a_skewed_pass_goes_mostly_to_the_last_three_days_and_a_uniform_one_to_all() {
        let now = 1_800_000_000_000;
        let orders = 120_000;
        let recent = |pass: &[TransitionRequest]| {
            pass.iter()
                .filter(|r| !matches!(r.transition.as_str(), "return" | "create" | "confirm"))
                .count() as f64
        };
        let skewed = requests(orders, 0, Access::Skewed, now);
        let uniform = requests(orders, 0, Access::Uniform, now);
        // Three days of 35 are in transit.
        assert!(recent(&skewed) / skewed.len() as f64 > 0.5);
        assert!(recent(&uniform) / (uniform.len() as f64) < 0.15);
        let returns = skewed.iter().filter(|r| r.transition == "return").count();
        assert!(returns > 0 && returns * 20 < skewed.len(), "{returns}");
        // Slots are disjoint.
        let other = requests(orders, 1, Access::Skewed, now);
        let ids: std::collections::HashSet<_> = skewed.iter().map(|r| &r.order_id).collect();
        assert!(other.iter().all(|r| !ids.contains(&r.order_id)));
    }
}
