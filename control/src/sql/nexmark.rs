//! The `nexmark` connector: the Nexmark benchmark's event generator (people, auctions
//! and bids of an online auction), with the schema of Flink's Nexmark suite:
//!
//! ```sql
//! CREATE TABLE nexmark (
//!   event_type INT,
//!   person  ROW<id BIGINT, name VARCHAR, emailAddress VARCHAR, creditCard VARCHAR,
//!               city VARCHAR, state VARCHAR, dateTime TIMESTAMP(3), extra VARCHAR>,
//!   auction ROW<id BIGINT, itemName VARCHAR, description VARCHAR, initialBid BIGINT,
//!               reserve BIGINT, dateTime TIMESTAMP(3), expires TIMESTAMP(3),
//!               seller BIGINT, category BIGINT, extra VARCHAR>,
//!   bid     ROW<auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR,
//!               url VARCHAR, dateTime TIMESTAMP(3), extra VARCHAR>,
//!   dateTime AS CASE WHEN event_type = 0 THEN person.dateTime
//!                    WHEN event_type = 1 THEN auction.dateTime
//!                    ELSE bid.dateTime END,
//!   WATERMARK FOR dateTime AS dateTime - INTERVAL '4' SECOND
//! ) WITH ('connector' = 'nexmark', 'events.num' = '10000000');
//! ```
//!
//! Event `n` is a function of the seed and `n` alone (the generator of the Nexmark
//! suite's model: of every `person + auction + bid` proportion events, the first are
//! people, then auctions, then bids; bids go mostly to hot auctions and come mostly
//! from hot bidders; prices are log-uniform), so a replay, a restore and a reference
//! computation see the same events. Event times advance by `1 / next-event.rate`
//! seconds per event from `base-time`. A table may declare any subset of the columns:
//! the generator makes only those.

use super::types::{parse_timestamp, DataType, Row, Value};
use super::{SqlError, TableDef};
use std::sync::Arc;

const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: u64 = 5;
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_SELLER_RATIO: u64 = 4;
const HOT_BIDDER_RATIO: u64 = 4;
const HOT_CHANNELS_RATIO: u64 = 2;
const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
const NUM_ACTIVE_PEOPLE: u64 = 1000;
const PERSON_ID_LEAD: u64 = 10;
const AUCTION_ID_LEAD: u64 = 10;
const CHANNELS: u64 = 10_000;
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
/// Average sizes of the events (bytes), which `extra` pads to.
const PERSON_SIZE: usize = 200;
const AUCTION_SIZE: usize = 500;
const BID_SIZE: usize = 100;

/// One of the generator's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    EventType,
    PersonId,
    PersonName,
    PersonEmail,
    PersonCard,
    PersonCity,
    PersonState,
    PersonTime,
    PersonExtra,
    AuctionId,
    AuctionItem,
    AuctionDescription,
    AuctionInitialBid,
    AuctionReserve,
    AuctionTime,
    AuctionExpires,
    AuctionSeller,
    AuctionCategory,
    AuctionExtra,
    BidAuction,
    BidBidder,
    BidPrice,
    BidChannel,
    BidUrl,
    BidTime,
    BidExtra,
}

impl Field {
    /// Its bit in [`Nexmark::wanted`].
    fn bit(self) -> u64 {
        1 << (self as u32)
    }

    /// The event kind whose field this is (0 person, 1 auction, 2 bid; `None`: all).
    fn kind(self) -> Option<usize> {
        use Field::*;
        match self {
            EventType => None,
            PersonId | PersonName | PersonEmail | PersonCard | PersonCity | PersonState
            | PersonTime | PersonExtra => Some(0),
            AuctionId | AuctionItem | AuctionDescription | AuctionInitialBid | AuctionReserve
            | AuctionTime | AuctionExpires | AuctionSeller | AuctionCategory | AuctionExtra => {
                Some(1)
            }
            BidAuction | BidBidder | BidPrice | BidChannel | BidUrl | BidTime | BidExtra => Some(2),
        }
    }
}

/// (column name, field, type class: 'i' integer, 's' string, 't' timestamp).
const COLUMNS: &[(&str, Field, char)] = &[
    ("event_type", Field::EventType, 'i'),
    ("person.id", Field::PersonId, 'i'),
    ("person.name", Field::PersonName, 's'),
    ("person.emailAddress", Field::PersonEmail, 's'),
    ("person.creditCard", Field::PersonCard, 's'),
    ("person.city", Field::PersonCity, 's'),
    ("person.state", Field::PersonState, 's'),
    ("person.dateTime", Field::PersonTime, 't'),
    ("person.extra", Field::PersonExtra, 's'),
    ("auction.id", Field::AuctionId, 'i'),
    ("auction.itemName", Field::AuctionItem, 's'),
    ("auction.description", Field::AuctionDescription, 's'),
    ("auction.initialBid", Field::AuctionInitialBid, 'i'),
    ("auction.reserve", Field::AuctionReserve, 'i'),
    ("auction.dateTime", Field::AuctionTime, 't'),
    ("auction.expires", Field::AuctionExpires, 't'),
    ("auction.seller", Field::AuctionSeller, 'i'),
    ("auction.category", Field::AuctionCategory, 'i'),
    ("auction.extra", Field::AuctionExtra, 's'),
    ("bid.auction", Field::BidAuction, 'i'),
    ("bid.bidder", Field::BidBidder, 'i'),
    ("bid.price", Field::BidPrice, 'i'),
    ("bid.channel", Field::BidChannel, 's'),
    ("bid.url", Field::BidUrl, 's'),
    ("bid.dateTime", Field::BidTime, 't'),
    ("bid.extra", Field::BidExtra, 's'),
];

/// The generator a `nexmark` table declares.
#[derive(Clone, Debug)]
pub struct Nexmark {
    fields: Vec<Field>,
    /// The declared fields as a bit set (`1 << field`): strings of the others are not
    /// built (their random draws are still taken, so that values do not change).
    wanted: u64,
    /// Per kind (person, auction, bid): the columns an event of that kind sets, by
    /// position (the rest are NULL).
    by_kind: [Vec<(usize, Field)>; 3],
    /// Values a row has room for: its fields and the table's computed columns, which
    /// the scan adds to the same row.
    row_capacity: usize,
    /// Events in all (`None`: unbounded).
    pub events: Option<u64>,
    /// Events per second of event time (and of real time when rate-limited).
    pub rate: f64,
    rate_limited: bool,
    proportions: [u64; 3],
    seed: u64,
    base_ms: Option<i64>,
}

/// Which event kinds a table's columns need: (person, auction, bid).
impl Nexmark {
    /// Reads a table's options and maps its columns onto the generator's fields.
    pub fn from_table(def: &TableDef) -> Result<Self, SqlError> {
        let err = |m: String| SqlError::new(format!("table '{}': {m}", def.name));
        let opt = |k: &str| def.options.get(k).map(String::as_str);
        for k in def.options.keys() {
            if !matches!(
                k.as_str(),
                "connector"
                    | "events.num"
                    | "first-event.rate"
                    | "next-event.rate"
                    | "person.proportion"
                    | "auction.proportion"
                    | "bid.proportion"
                    | "seed"
                    | "base-time"
                    | "rate-limited"
            ) {
                return Err(super::connector::unknown_option(
                    def,
                    k,
                    "'events.num', 'first-event.rate', 'next-event.rate', 'person.proportion', 'auction.proportion', 'bid.proportion', 'seed', 'base-time' and 'rate-limited'",
                ));
            }
        }
        let int = |k: &str, default: u64| -> Result<u64, SqlError> {
            match opt(k) {
                None => Ok(default),
                Some(v) => v.trim().parse::<u64>().map_err(|_| {
                    err(format!(
                        "option '{k}' takes a non-negative integer, not '{v}'"
                    ))
                }),
            }
        };
        let events = int("events.num", 0)?;
        let rate = int("next-event.rate", int("first-event.rate", 10_000_000)?)?;
        if rate == 0 {
            return Err(err("'next-event.rate' must be positive".into()));
        }
        let proportions = [
            int("person.proportion", 1)?,
            int("auction.proportion", 3)?,
            int("bid.proportion", 46)?,
        ];
        if proportions.iter().sum::<u64>() == 0 || proportions.iter().any(|p| *p > 1_000_000) {
            return Err(err(
                "the proportions must be at most 1000000 and not all 0".into()
            ));
        }
        let seed = int("seed", 0)?;
        let base_ms = match opt("base-time") {
            Some(v) => Some(parse_timestamp(v).ok_or_else(|| {
                err(format!(
                    "'base-time' takes a timestamp as '2024-01-01 00:00:00', not '{v}'"
                ))
            })?),
            None => None,
        };
        let rate_limited = match opt("rate-limited") {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => return Err(err(format!("'rate-limited' is true or false, not '{v}'"))),
        };
        let mut fields = Vec::new();
        for c in &def.physical {
            let Some((_, f, class)) = COLUMNS.iter().find(|(n, _, _)| *n == c.name) else {
                return Err(err(format!(
                    "the nexmark connector has no column '{}' (it has {})",
                    c.name,
                    COLUMNS.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
                )));
            };
            let ok = match class {
                'i' => c.ty.is_integer(),
                's' => c.ty == DataType::String,
                _ => c.ty.is_timestamp(),
            };
            if !ok {
                return Err(err(format!(
                    "column '{}' is {}, not {}",
                    c.name,
                    match class {
                        'i' => "an integer (BIGINT)",
                        's' => "a STRING/VARCHAR",
                        _ => "a TIMESTAMP(3)",
                    },
                    c.ty
                )));
            }
            fields.push(*f);
        }
        let by_kind = std::array::from_fn(|k| {
            fields
                .iter()
                .enumerate()
                .filter(|(_, f)| f.kind().is_none_or(|fk| fk == k))
                .map(|(i, f)| (i, *f))
                .collect()
        });
        let wanted = fields.iter().fold(0u64, |m, f| m | f.bit());
        Ok(Self {
            wanted,
            row_capacity: fields.len() + def.extras.computed.len(),
            by_kind,
            fields,
            events: (events > 0).then_some(events),
            rate: rate as f64,
            rate_limited,
            proportions,
            seed,
            base_ms,
        })
    }

    fn total(&self) -> u64 {
        self.proportions.iter().sum()
    }

    /// The kind of event `n`: 0 person, 1 auction, 2 bid.
    pub fn kind(&self, n: u64) -> u8 {
        let o = n % self.total();
        if o < self.proportions[0] {
            0
        } else if o < self.proportions[0] + self.proportions[1] {
            1
        } else {
            2
        }
    }

    fn last_base0_person(&self, n: u64) -> u64 {
        let (epoch, offset) = (n / self.total(), n % self.total());
        let p = self.proportions[0].max(1);
        epoch * p + offset.min(p - 1)
    }

    fn last_base0_auction(&self, n: u64) -> u64 {
        let (mut epoch, mut offset) = (n / self.total(), n % self.total());
        let (pp, ap) = (self.proportions[0], self.proportions[1].max(1));
        if offset < pp {
            if epoch == 0 {
                return 0;
            }
            epoch -= 1;
            offset = ap - 1;
        } else if offset >= pp + ap {
            offset = ap - 1;
        } else {
            offset -= pp;
        }
        epoch * ap + offset
    }

    fn next_base0_person(&self, n: u64, rng: &mut Rng) -> u64 {
        let people = self.last_base0_person(n) + 1;
        let active = people.min(NUM_ACTIVE_PEOPLE);
        let k = rng.below(active + PERSON_ID_LEAD);
        (people - active + k).min(people.saturating_sub(1) + PERSON_ID_LEAD)
    }

    fn next_base0_auction(&self, n: u64, rng: &mut Rng) -> u64 {
        let max = self.last_base0_auction(n);
        let min = max.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
        min + rng.below(max - min + 1 + AUCTION_ID_LEAD)
    }

    /// Event `n`'s time (ms).
    pub fn time_ms(&self, n: u64, base_ms: i64) -> i64 {
        base_ms.saturating_add((n as f64 * 1000.0 / self.rate) as i64)
    }

    /// Event `n` as a row of the table's columns (the other kinds' columns NULL).
    pub fn row(&self, n: u64, base_ms: i64) -> Row {
        use Field::*;
        let base_ms = self.base_ms.unwrap_or(base_ms);
        let kind = self.kind(n);
        let mut rng = Rng::new(self.seed, n);
        let ts = Value::Ts(self.time_ms(n, base_ms));
        let mut values = Vec::with_capacity(self.row_capacity);
        // The other kinds' columns stay NULL; this kind's are set where they are.
        values.resize(self.fields.len(), Value::Null);
        let own = &self.by_kind[usize::from(kind.min(2))];
        // The draws in a fixed order per kind, whichever columns are declared, so that
        // a table of fewer columns sees the same values. (Each field is at most one
        // column: its strings move into the row.)
        match kind {
            0 => {
                let mut p = self.person(n, &mut rng);
                for &(i, f) in own {
                    values[i] = match f {
                        EventType => Value::Int(0),
                        PersonId => Value::Int(p.id),
                        PersonName => p.name.take().map_or(Value::Null, Value::Str),
                        PersonEmail => p.email.take().map_or(Value::Null, Value::Str),
                        PersonCard => p.card.take().map_or(Value::Null, Value::Str),
                        PersonCity => Value::Str(p.city.into()),
                        PersonState => Value::Str(p.state.into()),
                        PersonTime => ts.clone(),
                        PersonExtra => p.extra.take().map_or(Value::Null, Value::Str),
                        _ => Value::Null,
                    };
                }
            }
            1 => {
                let mut a = self.auction(n, &mut rng, &ts);
                for &(i, f) in own {
                    values[i] = match f {
                        EventType => Value::Int(1),
                        AuctionId => Value::Int(a.id),
                        AuctionItem => a.item.take().map_or(Value::Null, Value::Str),
                        AuctionDescription => a.description.take().map_or(Value::Null, Value::Str),
                        AuctionInitialBid => Value::Int(a.initial_bid),
                        AuctionReserve => Value::Int(a.reserve),
                        AuctionTime => ts.clone(),
                        AuctionExpires => a.expires.clone(),
                        AuctionSeller => Value::Int(a.seller),
                        AuctionCategory => Value::Int(a.category),
                        AuctionExtra => a.extra.take().map_or(Value::Null, Value::Str),
                        _ => Value::Null,
                    };
                }
            }
            _ => {
                let mut b = self.bid(n, &mut rng);
                for &(i, f) in own {
                    values[i] = match f {
                        EventType => Value::Int(i64::from(kind)),
                        BidAuction => Value::Int(b.auction),
                        BidBidder => Value::Int(b.bidder),
                        BidPrice => Value::Int(b.price),
                        BidChannel => b.channel.take().map_or(Value::Null, Value::Str),
                        BidUrl => b.url.take().map_or(Value::Null, Value::Str),
                        BidTime => ts.clone(),
                        BidExtra => b.extra.take().map_or(Value::Null, Value::Str),
                        _ => Value::Null,
                    };
                }
            }
        }
        Row::insert(values)
    }

    /// Whether the table declares `f`.
    fn wants(&self, f: Field) -> bool {
        self.wanted & f.bit() != 0
    }

    fn person(&self, n: u64, rng: &mut Rng) -> Person {
        let id = self.last_base0_person(n) as i64 + FIRST_PERSON_ID;
        let first = FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize];
        let last = LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize];
        let name = self
            .wants(Field::PersonName)
            .then(|| arc_fmt(format_args!("{first} {last}")));
        // user@domain.com: 7 + 1 + 5 + 4 bytes; the card: four groups of four digits.
        let email = if self.wants(Field::PersonEmail) {
            let (user, domain) = (rng.string(7), rng.string(5));
            Some(arc_fmt(format_args!("{user}@{domain}.com")))
        } else {
            rng.skip_letters(7);
            rng.skip_letters(5);
            None
        };
        let digits = [
            rng.below(10_000),
            rng.below(10_000),
            rng.below(10_000),
            rng.below(10_000),
        ];
        let card = self.wants(Field::PersonCard).then(|| {
            arc_fmt(format_args!(
                "{:04} {:04} {:04} {:04}",
                digits[0], digits[1], digits[2], digits[3]
            ))
        });
        let city = CITIES[rng.below(CITIES.len() as u64) as usize];
        let state = STATES[rng.below(STATES.len() as u64) as usize];
        let name_len = first.len() + 1 + last.len();
        debug_assert!(name.as_ref().is_none_or(|s| s.len() == name_len));
        debug_assert!(email.as_ref().is_none_or(|s| s.len() == 17));
        debug_assert!(card.as_ref().is_none_or(|s| s.len() == 19));
        let extra = self.wants(Field::PersonExtra).then(|| {
            let size = 8 + name_len + 17 + 19 + city.len() + state.len() + 8;
            rng.extra(size, PERSON_SIZE)
        });
        Person {
            id,
            name,
            email,
            card,
            city,
            state,
            extra,
        }
    }

    fn auction(&self, n: u64, rng: &mut Rng, ts: &Value) -> Auction {
        let id = self.last_base0_auction(n) as i64 + FIRST_AUCTION_ID;
        let seller = if rng.below(HOT_SELLER_RATIO) > 0 {
            (self.last_base0_person(n) / HOT_SELLER_RATIO) * HOT_SELLER_RATIO
        } else {
            self.next_base0_person(n, rng)
        } as i64
            + FIRST_PERSON_ID;
        let category = FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES) as i64;
        let initial_bid = rng.price();
        let reserve = initial_bid + rng.price();
        let item = if self.wants(Field::AuctionItem) {
            Some(rng.arc_string(20))
        } else {
            rng.skip_letters(20);
            None
        };
        let description = if self.wants(Field::AuctionDescription) {
            Some(rng.arc_string(100))
        } else {
            rng.skip_letters(100);
            None
        };
        let length_ms = 10_000 + rng.below(10_000) as i64;
        let expires = match ts {
            Value::Ts(t) => Value::Ts(t.saturating_add(length_ms)),
            _ => Value::Null,
        };
        let extra = self.wants(Field::AuctionExtra).then(|| {
            let size = 8 + 20 + 100 + 8 + 8 + 8 + 8 + 8 + 8;
            rng.extra(size, AUCTION_SIZE)
        });
        Auction {
            id,
            item,
            description,
            initial_bid,
            reserve,
            expires,
            seller,
            category,
            extra,
        }
    }

    fn bid(&self, n: u64, rng: &mut Rng) -> Bid {
        let auction = if rng.below(HOT_AUCTION_RATIO) > 0 {
            (self.last_base0_auction(n) / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
        } else {
            self.next_base0_auction(n, rng)
        } as i64
            + FIRST_AUCTION_ID;
        let bidder = if rng.below(HOT_BIDDER_RATIO) > 0 {
            (self.last_base0_person(n) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
        } else {
            self.next_base0_person(n, rng)
        } as i64
            + FIRST_PERSON_ID;
        let price = rng.price();
        let (want_channel, want_url) = (self.wants(Field::BidChannel), self.wants(Field::BidUrl));
        let (channel, url, size) = if rng.below(HOT_CHANNELS_RATIO) > 0 {
            let i = rng.below(HOT_CHANNELS.len() as u64) as usize;
            let (channel, url) = &hot_channels()[i];
            (
                want_channel.then(|| channel.clone()),
                want_url.then(|| url.clone()),
                channel.len() + url.len(),
            )
        } else {
            let c = rng.below(CHANNELS);
            let url = if want_url {
                Some(arc_with(|s| {
                    s.push_str("https://www.nexmark.com/");
                    for _ in 0..3 {
                        rng.push_letters(s, 5);
                        s.push('/');
                    }
                    s.push_str("item.htm?query=1&channel_id=");
                    push_u64(s, c);
                }))
            } else {
                for _ in 0..3 {
                    rng.skip_letters(5);
                }
                None
            };
            let channel = want_channel.then(|| {
                arc_with(|s| {
                    s.push_str("channel-");
                    push_u64(s, c);
                })
            });
            // "channel-" and the URL's fixed parts, its three 5-letter segments and the
            // channel number in both.
            let digits = decimal_digits(c);
            debug_assert!(url
                .as_ref()
                .is_none_or(|s| s.len() == 24 + 18 + 28 + digits));
            debug_assert!(channel.as_ref().is_none_or(|s| s.len() == 8 + digits));
            (channel, url, 8 + digits + 24 + 18 + 28 + digits)
        };
        let extra = self.wants(Field::BidExtra).then(|| {
            let size = 8 + 8 + 8 + size + 8;
            rng.extra(size, BID_SIZE)
        });
        Bid {
            auction,
            bidder,
            price,
            channel,
            url,
            extra,
        }
    }
}

/// How many decimal digits `n` has.
fn decimal_digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

// (Strings of fields the table does not declare are `None`.)
struct Person {
    id: i64,
    name: Option<Arc<str>>,
    email: Option<Arc<str>>,
    card: Option<Arc<str>>,
    city: &'static str,
    state: &'static str,
    extra: Option<Arc<str>>,
}

struct Auction {
    id: i64,
    item: Option<Arc<str>>,
    description: Option<Arc<str>>,
    initial_bid: i64,
    reserve: i64,
    expires: Value,
    seller: i64,
    category: i64,
    extra: Option<Arc<str>>,
}

struct Bid {
    auction: i64,
    bidder: i64,
    price: i64,
    channel: Option<Arc<str>>,
    url: Option<Arc<str>>,
    extra: Option<Arc<str>>,
}

/// A hot channel's URL (fixed per channel: it carries no `channel_id`).
fn hot_url(i: usize) -> String {
    base_url(&mut Rng::new(0x5eed, i as u64))
}

fn base_url(rng: &mut Rng) -> String {
    format!(
        "https://www.nexmark.com/{}/{}/{}/item.htm?query=1",
        rng.string(5),
        rng.string(5),
        rng.string(5)
    )
}

thread_local! {
    /// The buffer strings are built in before their one allocation.
    static BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// A string built by `f` in a reused buffer, then allocated once.
fn arc_with(f: impl FnOnce(&mut String)) -> Arc<str> {
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        f(&mut b);
        Arc::from(b.as_str())
    })
}

/// `format!` into a reused buffer, then one allocation for the shared string.
fn arc_fmt(args: std::fmt::Arguments<'_>) -> Arc<str> {
    use std::fmt::Write as _;
    arc_with(|b| {
        let _ = b.write_fmt(args);
    })
}

/// Appends `n` in decimal.
fn push_u64(b: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut k = digits.len();
    loop {
        k -= 1;
        digits[k] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[k..] {
        b.push(char::from(d));
    }
}

/// The empty string, shared.
fn empty() -> Arc<str> {
    static EMPTY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Arc::from("")).clone()
}

/// The hot channels and their URLs, made once.
fn hot_channels() -> &'static [(Arc<str>, Arc<str>); 4] {
    static HOT: std::sync::OnceLock<[(Arc<str>, Arc<str>); 4]> = std::sync::OnceLock::new();
    HOT.get_or_init(|| std::array::from_fn(|i| (HOT_CHANNELS[i].into(), hot_url(i).into())))
}

/// A small, fast, seeded generator (SplitMix64), one stream per event.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, n: u64) -> Self {
        Rng(seed ^ n.wrapping_mul(0x9FB2_1C65_1E98_DF25) ^ 0xA24B_AED4_963E_E407)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n.max(1))) >> 64) as u64
    }

    /// Log-uniform from 1 to 10^8 cents, as Nexmark's prices.
    fn price(&mut self) -> i64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        // 10^(6u) as e^(6u ln 10): `exp` is cheaper than a general power.
        ((u * 6.0 * std::f64::consts::LN_10).exp() * 100.0).round() as i64
    }

    fn string(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len);
        self.push_letters(&mut s, len);
        s
    }

    fn push_letters(&mut self, s: &mut String, len: usize) {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
        let mut x = self.next();
        for k in 0..len {
            if k % 12 == 11 {
                x = self.next();
            }
            s.push(ALPHABET[(x % 26) as usize] as char);
            x /= 26;
        }
    }

    /// Takes the draws [`Rng::push_letters`] takes for `len` letters, making none.
    fn skip_letters(&mut self, len: usize) {
        for _ in 0..1 + len / 12 {
            self.next();
        }
    }

    /// Random letters as a shared string (one allocation).
    fn arc_string(&mut self, len: usize) -> Arc<str> {
        arc_with(|b| self.push_letters(b, len))
    }

    /// Padding that brings an event of `size` bytes to about `average`.
    fn extra(&mut self, size: usize, average: usize) -> Arc<str> {
        if size >= average {
            return empty();
        }
        let want = average - size;
        let delta = want / 5;
        let len = want - delta + self.below(2 * delta as u64 + 1) as usize;
        self.arc_string(len)
    }
}

/// Registers the Nexmark suite's user function `count_char(s, c)`: how many times the
/// character `c` occurs in `s` (query 14 calls it).
pub fn register_functions() {
    super::functions::register("count_char", Some(2), DataType::BigInt, |args| {
        match (&args[0], &args[1]) {
            (Value::Str(s), Value::Str(c)) => match c.chars().next() {
                Some(c) => Value::Int(s.chars().filter(|x| *x == c).count() as i64),
                None => Value::Int(0),
            },
            _ => Value::Null,
        }
    });
}

impl super::connector::IndexedRows for Nexmark {
    fn total(&self) -> Option<u64> {
        self.events
    }
    fn pace(&self) -> Option<f64> {
        self.rate_limited.then_some(self.rate)
    }
    fn row(&self, i: u64, now_ms: i64) -> Row {
        Nexmark::row(self, i, now_ms)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::sql::Column;

    fn table(cols: &[(&str, DataType)]) -> TableDef {
        TableDef {
            name: "nexmark".into(),
            physical: cols.iter().map(|(n, t)| Column::new(*n, *t)).collect(),
            extras: Default::default(),
            options: [("connector".to_string(), "nexmark".to_string())].into(),
            temporary: false,
            partition_keys: Vec::new(),
        }
    }

    /// A table of some of the columns sees, in them, the very values a table of all
    /// of them does (strings of undeclared fields are not built, their draws taken).
    #[test]
    fn fewer_columns_see_the_same_values() {
        let class = |c: char| match c {
            'i' => DataType::BigInt,
            's' => DataType::String,
            _ => DataType::Timestamp,
        };
        let all: Vec<(&str, DataType)> = COLUMNS.iter().map(|(n, _, c)| (*n, class(*c))).collect();
        let full = Nexmark::from_table(&table(&all)).unwrap();
        // Subsets: each column alone, every other one, and the extras without the
        // strings their sizes depend on.
        let mut subsets: Vec<Vec<usize>> = (0..all.len()).map(|i| vec![i]).collect();
        subsets.push((0..all.len()).step_by(2).collect());
        subsets.push((1..all.len()).step_by(2).collect());
        subsets.push(
            all.iter()
                .enumerate()
                .filter(|(_, (n, _))| n.ends_with("extra") || n.ends_with("dateTime"))
                .map(|(i, _)| i)
                .collect(),
        );
        let mut seen_cold_channel = false;
        for subset in subsets {
            let cols: Vec<(&str, DataType)> = subset.iter().map(|&i| all[i]).collect();
            let g = Nexmark::from_table(&table(&cols)).unwrap();
            for n in 0..20_000 {
                let (whole, part) = (full.row(n, 0), g.row(n, 0));
                let want: Vec<&Value> = subset.iter().map(|&i| &whole.values[i]).collect();
                let got: Vec<&Value> = part.values.iter().collect();
                assert_eq!(got, want, "event {n}, columns {cols:?}");
                if let Value::Str(c) = &whole.values[22] {
                    seen_cold_channel |= c.starts_with("channel-");
                }
            }
        }
        assert!(seen_cold_channel, "some bids on channels off the hot list");
    }

    #[test]
    fn events_follow_the_proportions_and_ids_stay_in_flight() {
        let g = Nexmark::from_table(&table(&[
            ("event_type", DataType::Int),
            ("bid.auction", DataType::BigInt),
            ("bid.price", DataType::BigInt),
            ("auction.id", DataType::BigInt),
        ]))
        .unwrap();
        let mut kinds = [0u64; 3];
        let mut max_auction = 0;
        for n in 0..50_000 {
            let r = g.row(n, 0);
            let k = g.kind(n);
            kinds[k as usize] += 1;
            assert_eq!(r.values[0], Value::Int(i64::from(k)));
            match k {
                1 => {
                    let Value::Int(id) = r.values[3] else {
                        panic!()
                    };
                    assert!(id >= max_auction, "auction ids grow");
                    max_auction = id;
                    assert_eq!(r.values[1], Value::Null);
                }
                2 => {
                    let (Value::Int(a), Value::Int(p)) = (&r.values[1], &r.values[2]) else {
                        panic!()
                    };
                    // Bids go to auctions that exist or are about to.
                    assert!(
                        *a <= max_auction + AUCTION_ID_LEAD as i64 + 1,
                        "{a} {max_auction}"
                    );
                    assert!((100..=100_000_000).contains(p));
                }
                _ => {}
            }
        }
        assert_eq!(kinds, [1000, 3000, 46_000]);
        // The same event, the same values; another seed, other values.
        assert_eq!(g.row(12_345, 0), g.row(12_345, 0));
    }

    #[test]
    fn bad_columns_and_options_are_named() {
        let e = Nexmark::from_table(&table(&[("bid.pryce", DataType::BigInt)])).unwrap_err();
        assert!(e.message.contains("no column 'bid.pryce'"), "{e}");
        let e = Nexmark::from_table(&table(&[("bid.price", DataType::String)])).unwrap_err();
        assert!(e.message.contains("bid.price"), "{e}");
        let mut t = table(&[("bid.price", DataType::BigInt)]);
        t.options.insert("events.nm".into(), "5".into());
        let e = Nexmark::from_table(&t).unwrap_err();
        assert!(e.message.contains("unknown option 'events.nm'"), "{e}");
    }
}
