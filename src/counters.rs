//! One way to declare event counters, for the dataplane, the server, the
//! control node and the router: a counter is one line in a `counters!`
//! list, and the struct, its snapshot, the sum across threads, serde
//! (so `ringlink status --json` carries it), the name/value listing
//! (so the human form shows it) and each counter's description (the
//! `HELP` line of `/metrics`) all follow. Every counter needs a doc
//! comment: the macro does not accept one without.

/// `counters!(plain Name { ... })` declares a `u64` struct owned by one
/// thread. `counters!(atomic Live => Snapshot { ... })` declares relaxed
/// atomics shared between threads plus their plain snapshot. Inside the
/// braces, each counter is its doc comment, its name and a comma.
macro_rules! counters {
    ($(#[$meta:meta])* plain $snap:ident { $($(#[doc = $doc:literal])+ $field:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        // A status from an older or newer client still parses.
        #[serde(default)]
        pub struct $snap {
            $($(#[doc = $doc])+ pub $field: u64,)*
        }

        impl $snap {
            /// Every counter with its name, in declaration order.
            pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$((stringify!($field), self.$field),)*].into_iter()
            }

            /// Every counter with its name and its doc comment, in
            /// declaration order.
            pub fn described(&self) -> impl Iterator<Item = $crate::counters::Described> {
                [$($crate::counters::Described {
                    name: stringify!($field),
                    doc: concat!($($doc, "\n"),+),
                    value: self.$field,
                },)*]
                .into_iter()
            }
        }

        impl std::ops::AddAssign for $snap {
            fn add_assign(&mut self, o: Self) {
                $(self.$field += o.$field;)*
            }
        }

        impl std::iter::Sum for $snap {
            fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
                let mut total = Self::default();
                for s in iter {
                    total += s;
                }
                total
            }
        }
    };
    ($(#[$meta:meta])* atomic $live:ident => $snap:ident { $($(#[doc = $doc:literal])+ $field:ident,)* }) => {
        $crate::counters::counters! {
            #[doc = concat!("A plain copy of [`", stringify!($live), "`].")]
            plain $snap { $($(#[doc = $doc])+ $field,)* }
        }

        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $live {
            $($(#[doc = $doc])+ pub $field: std::sync::atomic::AtomicU64,)*
        }

        impl $live {
            pub fn snapshot(&self) -> $snap {
                $snap {
                    $($field: self.$field.load(std::sync::atomic::Ordering::Relaxed),)*
                }
            }

            /// Folds a batch of local tallies in: one atomic add per non-zero
            /// field instead of one per event.
            pub fn add(&self, batch: &$snap) {
                $(
                    if batch.$field != 0 {
                        self.$field.fetch_add(batch.$field, std::sync::atomic::Ordering::Relaxed);
                    }
                )*
            }
        }
    };
}

pub(crate) use counters;

/// One counter as its `counters!` list declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Described {
    pub name: &'static str,
    /// The doc comment as written, lines joined with newlines.
    pub doc: &'static str,
    pub value: u64,
}

impl Described {
    /// The doc comment as one line (what a `HELP` line can hold).
    pub fn help(&self) -> String {
        self.doc.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// One titled block of `name value` pairs, four to a line; every counter is
/// shown, zero or not, so an operator can grep for one by name.
pub(crate) fn render_block(
    out: &mut String,
    title: &str,
    fields: impl Iterator<Item = (&'static str, u64)>,
) {
    out.push_str(&format!("\n{title}:\n"));
    let fields: Vec<_> = fields.collect();
    // Columns as wide as the block's longest name, so they line up.
    let width = fields.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for line in fields.chunks(4) {
        for (name, value) in line {
            out.push_str(&format!("  {name:<width$} {value:>12}"));
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    counters! {
        atomic Live => Snap {
            /// Documented,
            /// over two lines.
            a,
            /// B.
            b,
        }
    }

    #[test]
    fn one_list_gives_struct_snapshot_sum_and_names() {
        let live = Live::default();
        live.add(&Snap { a: 2, b: 0 });
        live.add(&Snap { a: 1, b: 5 });
        let s = live.snapshot();
        assert_eq!(s, Snap { a: 3, b: 5 });
        let total: Snap = [s, s].into_iter().sum();
        assert_eq!(total.fields().collect::<Vec<_>>(), [("a", 6), ("b", 10)]);
        let json = serde_json::to_string(&total).unwrap();
        assert_eq!(json, r#"{"a":6,"b":10}"#);
        let back: Snap = serde_json::from_str(r#"{"b":1}"#).unwrap();
        assert_eq!(back, Snap { a: 0, b: 1 });
        let described: Vec<_> = total
            .described()
            .map(|d| (d.name, d.help(), d.value))
            .collect();
        assert_eq!(
            described,
            [
                ("a", "Documented, over two lines.".to_string(), 6),
                ("b", "B.".to_string(), 10)
            ]
        );
    }
}
