//! Enums whose values are written out as text (in the API, conditions, events, metric
//! labels, environment variables, annotations): each variant is written as its own name,
//! rendered and read back in one place.

/// A name that is none of an enum's variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{found:?} names no {of}: expected one of {expected}")]
pub struct UnknownName {
    /// What was looked for (`mode`, `MTA`...).
    pub of: &'static str,
    pub found: String,
    /// The names that exist, comma-separated.
    pub expected: String,
}

/// Gives a fieldless enum `ALL`, `as_str` (each variant's own name), `Display` and a
/// `FromStr` that ignores ASCII case (annotations and flags are typed by hand). A
/// variant left out of the list fails to compile (`as_str` is an exhaustive match).
macro_rules! named_variants {
    ($type:ident, $of:literal, [$($variant:ident),+ $(,)?]) => {
        impl $type {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The variant's name, as it is written everywhere.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($variant)),+
                }
            }
        }

        impl ::std::fmt::Display for $type {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $type {
            type Err = $crate::api::names::UnknownName;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|variant| variant.as_str().eq_ignore_ascii_case(text))
                    .ok_or_else(|| $crate::api::names::UnknownName {
                        of: $of,
                        found: text.to_string(),
                        expected: Self::ALL
                            .iter()
                            .map(|variant| variant.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            }
        }
    };
}

pub(crate) use named_variants;
