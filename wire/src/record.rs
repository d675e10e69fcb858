//! Forward- and backward-compatible records.
//!
//! Every record on the wire (and in the agent's spool) is a MessagePack array of its fields in
//! declaration order. The encoder trims trailing fields that hold their default, which keeps a
//! typical probe result at a handful of bytes. The decoder requires the first `required` fields,
//! fills any missing later field with its default (bytes from an older peer), and skips trailing
//! elements it does not know (bytes from a newer peer). That is what lets agents and collectors of
//! neighbouring versions meet in production: fields are only ever appended, never reordered.

/// Declares a wire record: a plain struct plus the tolerant array encoding described above.
/// Every field type must implement `Default + PartialEq + Serialize + Deserialize`.
#[macro_export]
macro_rules! wire_record {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )+
        }
        required = $required:expr;
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )+
        }

        impl serde::Serialize for $name {
            #[allow(unused_comparisons, clippy::absurd_extreme_comparisons)]
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeTuple;
                let defaults = Self::default();
                let differs: &[bool] = &[ $( self.$field != defaults.$field ),+ ];
                let len = differs
                    .iter()
                    .rposition(|d| *d)
                    .map_or(0, |i| i + 1)
                    .max($required);
                let mut tuple = serializer.serialize_tuple(len)?;
                let mut index = 0usize;
                $(
                    if index < len {
                        tuple.serialize_element(&self.$field)?;
                    }
                    index += 1;
                )+
                let _ = index;
                tuple.end()
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct RecordVisitor;
                impl<'de> serde::de::Visitor<'de> for RecordVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        write!(f, "{} as an array of at least {} fields", stringify!($name), $required)
                    }
                    #[allow(unused_comparisons, clippy::absurd_extreme_comparisons)]
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<$name, A::Error> {
                        let mut out = $name::default();
                        let mut index = 0usize;
                        $(
                            match seq.next_element()? {
                                Some(value) => out.$field = value,
                                None => {
                                    if index < $required {
                                        return Err(serde::de::Error::invalid_length(index, &self));
                                    }
                                    return Ok(out);
                                }
                            }
                            index += 1;
                        )+
                        let _ = index;
                        // Fields appended by a newer peer: skipped, never an error.
                        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                        Ok(out)
                    }
                }
                deserializer.deserialize_seq(RecordVisitor)
            }
        }
    };
}
