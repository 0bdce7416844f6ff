//! Hand-written statements that PostgreSQL keeps prepared. diesel's `sql_query` marks itself
//! unsafe to cache, so every call is parsed, analysed and planned again; on the send path that
//! was a quarter of the database's CPU. [`Sql`] carries a fixed text and typed binds, and the
//! connection's statement cache keys it by that text.

use std::marker::PhantomData;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::{QueryResult, result::Error};

/// One bind value with its SQL type.
trait Bind: Send + Sync {
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

struct Typed<ST, T>(T, PhantomData<fn() -> ST>);

impl<ST, T> Bind for Typed<ST, T>
where
    Pg: HasSqlType<ST>,
    T: ToSql<ST, Pg> + Send + Sync,
{
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<ST, T>(&self.0)
    }
}

/// A statement with a fixed text using `$1`, `$2`, … for its binds (a number may repeat), and
/// the binds in that order. Load rows with `QueryableByName` types, as with `sql_query`.
pub struct Sql<'a> {
    text: &'static str,
    binds: Vec<Box<dyn Bind + 'a>>,
}

/// Starts a prepared statement.
pub fn prepared<'a>(text: &'static str) -> Sql<'a> {
    Sql {
        text,
        binds: Vec::new(),
    }
}

impl<'a> Sql<'a> {
    /// Adds the next bind.
    pub fn bind<ST, T>(mut self, value: T) -> Self
    where
        Pg: HasSqlType<ST>,
        T: ToSql<ST, Pg> + Send + Sync + 'a,
        ST: 'a,
    {
        self.binds
            .push(Box::new(Typed(value, PhantomData::<fn() -> ST>)));
        self
    }
}

impl QueryFragment<Pg> for Sql<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // diesel numbers binds itself, in the order they are pushed; a number that repeats in
        // the text is pushed again, so the generated text stays the same on every call.
        let mut rest = self.text;
        while let Some(at) = rest.find('$') {
            out.push_sql(&rest[..at]);
            let digits = rest[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len() - at - 1);
            let n: usize = rest[at + 1..at + 1 + digits]
                .parse()
                .map_err(|_| Error::QueryBuilderError("`$` without a bind number".into()))?;
            let bind = n
                .checked_sub(1)
                .and_then(|i| self.binds.get(i))
                .ok_or_else(|| Error::QueryBuilderError(format!("no value for ${n}").into()))?;
            bind.push(&mut out)?;
            rest = &rest[at + 1 + digits..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

impl QueryId for Sql<'_> {
    type QueryId = ();
    // Not a static id: the statement cache then keys the prepared statement by its text.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Sql<'_> {
    type SqlType = Untyped;
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::sql_types::{BigInt, Text};

    #[test]
    fn repeated_numbers_are_bound_again_in_order() {
        let q = prepared("SELECT $2::text, $1::bigint, $2::text")
            .bind::<BigInt, _>(7_i64)
            .bind::<Text, _>("x".to_owned());
        let sql = diesel::debug_query::<Pg, _>(&q).to_string();
        assert!(
            sql.starts_with("SELECT $1::text, $2::bigint, $3::text"),
            "{sql}"
        );
        assert!(sql.contains(r#"["x", 7, "x"]"#), "{sql}");
    }

    #[test]
    fn a_missing_bind_is_an_error_not_a_panic() {
        let q = prepared("SELECT $3").bind::<BigInt, _>(1_i64);
        let mut out = String::new();
        let r = std::fmt::write(
            &mut out,
            format_args!("{}", diesel::debug_query::<Pg, _>(&q)),
        );
        assert!(r.is_err());
    }
}
