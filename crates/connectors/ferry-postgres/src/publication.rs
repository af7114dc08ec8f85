//! Ferry's publication `ferry_<pipeline>` on the source: what a run does
//! with it, and whether the user may. `ferry check` and `ferry run` read
//! the same [`Publication`], so a check that passes is a run that can.
//!
//! * It exists and lists exactly the selected tables: used as it is (an
//!   administrator may create it for a user who does not own the tables).
//! * It exists with other tables: `ALTER PUBLICATION ... SET TABLE`, which
//!   needs the publication's owner and the owner of every listed table.
//! * It does not exist: `CREATE PUBLICATION ... FOR TABLE`, which needs
//!   `CREATE` on the database and the owner of every listed table.
//!
//! A superuser may do all of it. Ownership through a role the user is a
//! member of counts, as it does for PostgreSQL.

use ferry_core::{Error, Result, TableName};
use tokio_postgres::Client;

use crate::error::pg_error;
use crate::types::ident;

/// What the source holds and what the user may do, for one publication
/// and a set of tables.
#[derive(Debug)]
pub(crate) struct Publication {
    name: String,
    /// The selected tables, `schema.name`, sorted.
    wanted: Vec<String>,
    /// The tables it lists now, `schema.name` (`None`: it does not exist).
    listed: Option<Vec<String>>,
    /// Its owner, when it exists.
    owner: Option<String>,
    superuser: bool,
    may_create: bool,
    owns_publication: bool,
    /// Selected tables the user does not own, with their owners.
    not_owned: Vec<(String, String)>,
    user: String,
}

/// A table as PostgreSQL shows it in `pg_publication_tables`.
fn plain(t: &TableName) -> String {
    format!("{}.{}", t.namespace.as_deref().unwrap_or("public"), t.name)
}

fn quoted(plain: &str) -> String {
    let (schema, name) = plain.split_once('.').unwrap_or(("public", plain));
    format!("{}.{}", ident(schema), ident(name))
}

impl Publication {
    /// Reads publication `name` and the rights of the current user over it
    /// and over `tables`.
    pub async fn inspect(client: &Client, name: &str, tables: &[TableName]) -> Result<Self> {
        let mut wanted: Vec<String> = tables.iter().map(plain).collect();
        wanted.sort();
        let failed = |e| pg_error(e, "reading the publication and table owners");
        let row = client
            .query_one(
                "SELECT current_user::text, \
                        (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                        has_database_privilege(current_database(), 'CREATE'), \
                        p.oid IS NOT NULL, \
                        pg_get_userbyid(p.pubowner)::text, \
                        coalesce(pg_has_role(current_user, p.pubowner, 'USAGE'), false), \
                        ARRAY(SELECT t.schemaname || '.' || t.tablename \
                              FROM pg_publication_tables t WHERE t.pubname = $1) \
                 FROM (SELECT 1) one LEFT JOIN pg_publication p ON p.pubname = $1",
                &[&name],
            )
            .await
            .map_err(failed)?;
        let exists: bool = row.get(3);
        let mut listed: Vec<String> = row.get(6);
        listed.sort();
        let owners = client
            .query(
                "SELECT n.nspname || '.' || c.relname, pg_get_userbyid(c.relowner)::text \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname || '.' || c.relname = ANY($1) \
                   AND NOT pg_has_role(current_user, c.relowner, 'USAGE') \
                 ORDER BY 1",
                &[&wanted],
            )
            .await
            .map_err(failed)?;
        Ok(Publication {
            name: name.to_owned(),
            wanted,
            listed: exists.then_some(listed),
            owner: row.get(4),
            superuser: row.get::<_, Option<bool>>(1).unwrap_or(false),
            may_create: row.get(2),
            owns_publication: row.get(5),
            not_owned: owners.iter().map(|r| (r.get(0), r.get(1))).collect(),
            user: row.get(0),
        })
    }

    /// It exists and lists exactly the selected tables.
    pub fn ready(&self) -> bool {
        self.listed.as_ref() == Some(&self.wanted)
    }

    /// The statement a run executes (`None`: the publication is used as
    /// it is).
    pub fn statement(&self) -> Option<String> {
        let name = ident(&self.name);
        let list: Vec<String> = self.wanted.iter().map(|t| quoted(t)).collect();
        match (&self.listed, list.is_empty()) {
            _ if self.ready() => None,
            (None, true) => Some(format!("CREATE PUBLICATION {name}")),
            (None, false) => Some(format!(
                "CREATE PUBLICATION {name} FOR TABLE {} WITH (publish_via_partition_root = true)",
                list.join(", ")
            )),
            (Some(_), false) => Some(format!(
                "ALTER PUBLICATION {name} SET TABLE {}",
                list.join(", ")
            )),
            (Some(_), true) => None,
        }
    }

    /// Why the user cannot run [`statement`](Self::statement), and the
    /// fix; `None` when it can (or nothing needs running).
    pub fn refusal(&self) -> Option<(String, String)> {
        if self.statement().is_none() || self.superuser {
            return None;
        }
        let admin_sql = format!(
            "{}; ferry then uses it as it is",
            match &self.listed {
                None => self.create_sql(),
                Some(_) => format!(
                    "ALTER PUBLICATION {} SET TABLE {}",
                    ident(&self.name),
                    self.quoted_list()
                ),
            }
        );
        let mut why = Vec::new();
        match &self.listed {
            None if !self.may_create => why.push(format!(
                "role {} may not create publications in this database",
                self.user
            )),
            Some(listed) if !self.owns_publication => why.push(format!(
                "publication {} exists, owned by {}, and lists {} instead of the selected tables",
                self.name,
                self.owner.as_deref().unwrap_or("?"),
                if listed.is_empty() {
                    "no table".to_owned()
                } else {
                    listed.join(", ")
                }
            )),
            _ => {}
        }
        if !self.not_owned.is_empty() {
            let tables: Vec<String> = self
                .not_owned
                .iter()
                .map(|(t, owner)| format!("{t} (owner {owner})"))
                .collect();
            why.push(format!(
                "role {} does not own {}, and {} a publication needs the tables' owner",
                self.user,
                tables.join(", "),
                if self.listed.is_some() {
                    "altering"
                } else {
                    "creating"
                }
            ));
        }
        if why.is_empty() {
            return None;
        }
        let owners = if self.not_owned.is_empty() {
            String::new()
        } else {
            format!(
                "make {} the owner of those tables (ALTER TABLE ... OWNER TO {}), or ",
                self.user, self.user
            )
        };
        Some((
            why.join("; "),
            format!("{owners}have an administrator run: {admin_sql}"),
        ))
    }

    fn quoted_list(&self) -> String {
        let list: Vec<String> = self.wanted.iter().map(|t| quoted(t)).collect();
        list.join(", ")
    }

    fn create_sql(&self) -> String {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
            ident(&self.name),
            self.quoted_list()
        )
    }

    /// What `ferry check` says: whether the run can do what it must.
    pub fn check_detail(&self) -> std::result::Result<String, (String, String)> {
        if let Some(refused) = self.refusal() {
            return Err(refused);
        }
        let n = self.wanted.len();
        Ok(match (&self.listed, self.statement()) {
            (_, None) => format!(
                "publication {} exists and lists the {n} selected tables; used as it is",
                self.name
            ),
            (None, Some(_)) => format!(
                "may create publication {} for the {n} selected tables",
                self.name
            ),
            (Some(_), Some(_)) => format!(
                "may set the tables of publication {} to the {n} selected ones",
                self.name
            ),
        })
    }

    /// Creates or alters the publication as needed; a user who may not is
    /// told why and what an administrator can do instead.
    pub async fn ensure(&self, client: &Client) -> Result<()> {
        let Some(sql) = self.statement() else {
            return Ok(());
        };
        if let Some((why, fix)) = self.refusal() {
            return Err(
                Error::fatal(format!("cannot set up publication {}: {why}", self.name))
                    .with_fix(fix),
            );
        }
        client.batch_execute(&sql).await.map_err(|e| {
            pg_error(e, &format!("setting up publication {}", self.name))
                .with("statement", sql.clone())
                .with_fix(format!(
                    "ferry's user must own the replicated tables and may create publications in \
                     this database; or an administrator runs {} and ferry uses it as it is",
                    self.create_sql()
                ))
        })
    }
}
