//! Query -> parameterized SQL over the index tables (PS3.4 C.2.2.2 matching). Values are
//! always bound parameters; only column names from the fixed `Column` table enter the SQL text.

use rusqlite::functions::FunctionFlags;
use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};

/// Query/Retrieve level (PS3.4 C.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Patient,
    Study,
    Series,
    Image,
}

impl Level {
    pub fn from_code(s: &str) -> Option<Level> {
        match s.trim() {
            "PATIENT" => Some(Level::Patient),
            "STUDY" => Some(Level::Study),
            "SERIES" => Some(Level::Series),
            "IMAGE" => Some(Level::Image),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Level::Patient => "PATIENT",
            Level::Study => "STUDY",
            Level::Series => "SERIES",
            Level::Image => "IMAGE",
        }
    }
}

/// How a value is compared (mirrors the VR families of PS3.4 C.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text compared as text (CS, LO, SH, AE, ...): single value and wildcard.
    Text,
    /// Person Name: component groups, optional case-insensitivity.
    PersonName,
    /// UID: single value or list of UIDs.
    Uid,
    /// Date, time, date-time: single value and ranges.
    Date,
    Time,
    /// Integer string: single value.
    Integer,
    /// Backslash-separated set (ModalitiesInStudy): matches if any listed value is present.
    Set,
    /// Computed on the fly, return only.
    Computed,
}

/// An indexed attribute: its level, SQL expression and kind. The SQL text is fixed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    PatientName,
    PatientId,
    IssuerOfPatientId,
    PatientBirthDate,
    PatientSex,
    NumberOfPatientRelatedStudies,
    NumberOfPatientRelatedSeries,
    NumberOfPatientRelatedInstances,
    StudyInstanceUid,
    StudyDate,
    StudyTime,
    AccessionNumber,
    StudyId,
    StudyDescription,
    ReferringPhysicianName,
    ModalitiesInStudy,
    SopClassesInStudy,
    NumberOfStudyRelatedSeries,
    NumberOfStudyRelatedInstances,
    SeriesInstanceUid,
    Modality,
    SeriesNumber,
    SeriesDescription,
    BodyPartExamined,
    SeriesDate,
    SeriesTime,
    NumberOfSeriesRelatedInstances,
    SopInstanceUid,
    SopClassUid,
    InstanceNumber,
    NumberOfFrames,
    Rows,
    Columns,
    /// Not a DICOM attribute: where the object is stored (for IMAGE-level header reads).
    StorageKey,
    /// Not a DICOM attribute: the transfer syntax the object was stored in (retrieve).
    StoredTransferSyntax,
    /// Not a DICOM attribute: bytes of the stored object (checked on every read).
    StoredSize,
    /// Not a DICOM attribute: the recorded digest of the stored object (`storage::digest`).
    StoredDigest,
    /// Not a DICOM attribute: the read check recorded beside it, or NULL.
    StoredReadCheck,
}

impl Column {
    pub fn level(self) -> Level {
        use Column::*;
        match self {
            PatientName
            | PatientId
            | IssuerOfPatientId
            | PatientBirthDate
            | PatientSex
            | NumberOfPatientRelatedStudies
            | NumberOfPatientRelatedSeries
            | NumberOfPatientRelatedInstances => Level::Patient,
            StudyInstanceUid
            | StudyDate
            | StudyTime
            | AccessionNumber
            | StudyId
            | StudyDescription
            | ReferringPhysicianName
            | ModalitiesInStudy
            | SopClassesInStudy
            | NumberOfStudyRelatedSeries
            | NumberOfStudyRelatedInstances => Level::Study,
            SeriesInstanceUid
            | Modality
            | SeriesNumber
            | SeriesDescription
            | BodyPartExamined
            | SeriesDate
            | SeriesTime
            | NumberOfSeriesRelatedInstances => Level::Series,
            SopInstanceUid | SopClassUid | InstanceNumber | NumberOfFrames | Rows | Columns
            | StorageKey | StoredTransferSyntax | StoredSize | StoredDigest | StoredReadCheck => {
                Level::Image
            }
        }
    }

    pub fn kind(self) -> Kind {
        use Column::*;
        match self {
            PatientName | ReferringPhysicianName => Kind::PersonName,
            StudyInstanceUid | SeriesInstanceUid | SopInstanceUid | SopClassUid => Kind::Uid,
            PatientBirthDate | StudyDate | SeriesDate => Kind::Date,
            StudyTime | SeriesTime => Kind::Time,
            SeriesNumber | InstanceNumber | NumberOfFrames | Rows | Columns => Kind::Integer,
            ModalitiesInStudy => Kind::Set,
            NumberOfPatientRelatedStudies
            | NumberOfPatientRelatedSeries
            | NumberOfPatientRelatedInstances
            | NumberOfStudyRelatedSeries
            | NumberOfStudyRelatedInstances
            | NumberOfSeriesRelatedInstances
            | SopClassesInStudy
            | StorageKey
            | StoredTransferSyntax
            | StoredSize
            | StoredDigest
            | StoredReadCheck => Kind::Computed,
            PatientId | IssuerOfPatientId | PatientSex | AccessionNumber | StudyId
            | StudyDescription | Modality | SeriesDescription | BodyPartExamined => Kind::Text,
        }
    }

    /// The SQL expression (aliases p, st, se, i as joined by `Query::to_sql`).
    fn sql(self) -> &'static str {
        use Column::*;
        match self {
            PatientName => "p.patient_name",
            PatientId => "p.patient_id",
            IssuerOfPatientId => "p.issuer_of_patient_id",
            PatientBirthDate => "p.patient_birth_date",
            PatientSex => "p.patient_sex",
            NumberOfPatientRelatedStudies => "p.num_studies",
            NumberOfPatientRelatedSeries => "p.num_series",
            NumberOfPatientRelatedInstances => "p.num_instances",
            StudyInstanceUid => "st.study_instance_uid",
            StudyDate => "st.study_date",
            StudyTime => "st.study_time",
            AccessionNumber => "st.accession_number",
            StudyId => "st.study_id",
            StudyDescription => "st.study_description",
            ReferringPhysicianName => "st.referring_physician_name",
            ModalitiesInStudy => "st.modalities_in_study",
            SopClassesInStudy => {
                "(SELECT group_concat(c, '\\') FROM (SELECT DISTINCT i2.sop_class_uid AS c \
                 FROM series se2 JOIN instance i2 ON i2.series_fk = se2.id \
                 WHERE se2.study_fk = st.id ORDER BY c))"
            }
            NumberOfStudyRelatedSeries => "st.num_series",
            NumberOfStudyRelatedInstances => "st.num_instances",
            SeriesInstanceUid => "se.series_instance_uid",
            Modality => "se.modality",
            SeriesNumber => "se.series_number",
            SeriesDescription => "se.series_description",
            BodyPartExamined => "se.body_part_examined",
            SeriesDate => "se.series_date",
            SeriesTime => "se.series_time",
            NumberOfSeriesRelatedInstances => "se.num_instances",
            SopInstanceUid => "i.sop_instance_uid",
            SopClassUid => "i.sop_class_uid",
            InstanceNumber => "i.instance_number",
            NumberOfFrames => "i.number_of_frames",
            Rows => "i.rows",
            Columns => "i.columns",
            StorageKey => "i.storage_key",
            StoredTransferSyntax => "i.transfer_syntax_uid",
            StoredSize => "i.size",
            StoredDigest => "i.digest",
            StoredReadCheck => "i.read_check",
        }
    }
}

/// A matching rule for one attribute (PS3.4 C.2.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// C.2.2.2.3: zero-length value, matches everything.
    Universal,
    /// C.2.2.2.1: exact value.
    Single(String),
    /// C.2.2.2.4: `*` and `?`.
    Wildcard(String),
    /// C.2.2.2.5: inclusive range, either end open.
    Range {
        from: Option<String>,
        to: Option<String>,
    },
    /// C.2.2.2.2: list of UIDs.
    UidList(Vec<String>),
    /// ModalitiesInStudy: any of these values.
    AnyOf(Vec<String>),
}

/// One condition of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub column: Column,
    pub matcher: Matcher,
}

/// A complete query against the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub level: Level,
    pub conditions: Vec<Condition>,
    /// Columns returned, in order.
    pub select: Vec<Column>,
    /// PersonName matching ignores case (Unicode lowercase of both sides).
    pub pn_case_insensitive: bool,
    /// Combined date-time matching (PS3.4 C.2.2.2.5.1) of StudyDate with StudyTime, when
    /// negotiated and both are given.
    pub combined_study_datetime: bool,
    /// The order of the matches (a page of them is a stable slice of it).
    pub order: Order,
}

/// The order of a query's matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// The order the archive received them (C-FIND, QIDO-RS).
    #[default]
    Received,
    /// Studies by StudyDate and StudyTime, newest first (the portal's study list); ties
    /// and studies without a date in received order, undated last.
    NewestStudyFirst,
    /// Studies by StudyDate and StudyTime, oldest first; undated last.
    OldestStudyFirst,
}

/// Register the SQL functions the generated SQL uses (`pn_match`). Call on every connection
/// that runs queries.
pub fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        "pn_match",
        3,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let value: Option<String> = ctx.get(0)?;
            let pattern: String = ctx.get(1)?;
            let ci: bool = ctx.get(2)?;
            Ok(value.is_some_and(|v: String| pn_matches(&v, &pattern, ci)))
        },
    )
}

/// PS3.4 C.2.2.2.1 / C.2.2.2.4 for PN: a pattern without `=` may match any component group
/// (alphabetic, ideographic, phonetic) of the value; a pattern with `=` is matched group by
/// group, an empty pattern group matching anything.
pub fn pn_matches(value: &str, pattern: &str, case_insensitive: bool) -> bool {
    let fold = |s: &str| {
        if case_insensitive {
            s.to_lowercase()
        } else {
            s.to_string()
        }
    };
    let (value, pattern) = (fold(value), fold(pattern));
    let groups: Vec<&str> = value.split('=').collect();
    if !pattern.contains('=') {
        return groups.iter().any(|g| wildcard_matches(g, &pattern));
    }
    pattern
        .split('=')
        .enumerate()
        .all(|(i, p)| p.is_empty() || wildcard_matches(groups.get(i).copied().unwrap_or(""), p))
}

/// `*` matches any run (also empty), `?` exactly one character; everything else literally.
pub fn wildcard_matches(value: &str, pattern: &str) -> bool {
    let v: Vec<char> = value.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    let (mut vi, mut pi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            vi += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = vi;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            vi = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// A DICOM wildcard pattern as a SQLite GLOB pattern: `*` and `?` keep their meaning, `[`
/// (GLOB's only other special character) is escaped as `[[]`.
fn to_glob(pattern: &str) -> String {
    pattern.replace('[', "[[]")
}

/// Sentinel appended to a range's upper bound so that values extending it (a TM of
/// "103045" under "-1030") are included: '~' sorts after every digit, '.' and ' '.
const UPPER_PAD: &str = "~";

impl Query {
    /// The SQL (and its parameters) that lists the matches; `count` asks for their number.
    pub fn to_sql(&self, count: bool) -> (String, Vec<Value>) {
        let from = match self.level {
            Level::Patient => "patient p",
            Level::Study => "study st JOIN patient p ON st.patient_fk = p.id",
            Level::Series => {
                "series se JOIN study st ON se.study_fk = st.id JOIN patient p ON st.patient_fk = p.id"
            }
            Level::Image => {
                "instance i JOIN series se ON i.series_fk = se.id \
                 JOIN study st ON se.study_fk = st.id JOIN patient p ON st.patient_fk = p.id"
            }
        };
        let mut params: Vec<Value> = Vec::new();
        let mut wheres: Vec<String> = Vec::new();

        let combined = self.combined_study_datetime
            && self.has_condition(Column::StudyDate)
            && self.has_condition(Column::StudyTime);
        // Below PATIENT level, patient conditions go into a subquery over the (small) patient
        // table, evaluated once, instead of being tested on every joined study row; the
        // inner `p` alias shadows the outer one, so column SQL is shared. Its text comes
        // first, so its parameters are bound first.
        let mut patient_params: Vec<Value> = Vec::new();
        let mut patient_wheres: Vec<String> = Vec::new();
        for c in &self.conditions {
            if combined && matches!(c.column, Column::StudyDate | Column::StudyTime) {
                continue;
            }
            if self.level > Level::Patient && c.column.level() == Level::Patient {
                if let Some(w) = condition_sql(c, self.pn_case_insensitive, &mut patient_params) {
                    patient_wheres.push(w);
                }
            } else if let Some(w) = condition_sql(c, self.pn_case_insensitive, &mut params) {
                wheres.push(w);
            }
        }
        if !patient_wheres.is_empty() {
            wheres.insert(
                0,
                format!(
                    "st.patient_fk IN (SELECT p.id FROM patient p WHERE {})",
                    patient_wheres.join(" AND ")
                ),
            );
            patient_params.append(&mut params);
            params = patient_params;
        }
        if combined {
            wheres.push(self.combined_datetime_sql(&mut params));
        }

        let select = if count {
            "count(*)".to_string()
        } else {
            self.select
                .iter()
                .map(|c| c.sql())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let order = match (count, self.level, self.order) {
            (true, _, _) => "",
            (false, Level::Study, Order::NewestStudyFirst) => {
                " ORDER BY st.study_date IS NULL, st.study_date DESC, st.study_time DESC, st.id"
            }
            (false, Level::Study, Order::OldestStudyFirst) => {
                " ORDER BY st.study_date IS NULL, st.study_date, st.study_time, st.id"
            }
            (false, Level::Patient, _) => " ORDER BY p.id",
            (false, Level::Study, _) => " ORDER BY st.id",
            (false, Level::Series, _) => " ORDER BY se.id",
            (false, Level::Image, _) => " ORDER BY i.id",
        };
        let mut sql = format!("SELECT {select} FROM {from}");
        if !wheres.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&wheres.join(" AND "));
        }
        sql.push_str(order);
        (sql, params)
    }

    fn has_condition(&self, col: Column) -> bool {
        self.conditions
            .iter()
            .any(|c| c.column == col && c.matcher != Matcher::Universal)
    }

    fn matcher(&self, col: Column) -> &Matcher {
        self.conditions
            .iter()
            .find(|c| c.column == col)
            .map(|c| &c.matcher)
            .unwrap_or(&Matcher::Universal)
    }

    /// PS3.4 C.2.2.2.5.1: StudyDate and StudyTime as one instant range.
    fn combined_datetime_sql(&self, params: &mut Vec<Value>) -> String {
        let bounds = |m: &Matcher| -> (Option<String>, Option<String>) {
            match m {
                Matcher::Single(v) => (Some(v.clone()), Some(v.clone())),
                Matcher::Range { from, to } => (from.clone(), to.clone()),
                _ => (None, None),
            }
        };
        let (d_from, d_to) = bounds(self.matcher(Column::StudyDate));
        let (t_from, t_to) = bounds(self.matcher(Column::StudyTime));
        let expr = "(st.study_date || coalesce(st.study_time, ''))";
        let mut parts = Vec::new();
        if let Some(d) = d_from {
            parts.push(format!("{expr} >= ?"));
            params.push(Value::Text(format!("{d}{}", t_from.unwrap_or_default())));
        }
        if let Some(d) = d_to {
            parts.push(format!("{expr} <= ?"));
            params.push(Value::Text(format!(
                "{d}{}{UPPER_PAD}",
                t_to.unwrap_or_default()
            )));
        }
        if parts.is_empty() {
            "1".to_string()
        } else {
            format!("({})", parts.join(" AND "))
        }
    }
}

fn condition_sql(c: &Condition, pn_ci: bool, params: &mut Vec<Value>) -> Option<String> {
    let col = c.column.sql();
    match (&c.matcher, c.column.kind()) {
        (Matcher::Universal, _) | (_, Kind::Computed) => None,
        (Matcher::Single(v) | Matcher::Wildcard(v), Kind::PersonName) => {
            params.push(Value::Text(v.clone()));
            params.push(Value::Integer(i64::from(pn_ci)));
            Some(format!("pn_match({col}, ?, ?)"))
        }
        (Matcher::Single(v), Kind::Integer) => match v.trim().parse::<i64>() {
            Ok(n) => {
                params.push(Value::Integer(n));
                Some(format!("{col} = ?"))
            }
            Err(_) => Some("0".to_string()),
        },
        (Matcher::Single(v), Kind::Time | Kind::Date) => {
            // A single TM value matches the same time given with more precision.
            params.push(Value::Text(v.clone()));
            params.push(Value::Text(format!("{v}{UPPER_PAD}")));
            Some(format!("({col} >= ? AND {col} <= ?)"))
        }
        (Matcher::Single(v), _) => {
            params.push(Value::Text(v.clone()));
            Some(format!("{col} = ?"))
        }
        (Matcher::Wildcard(v), _) => {
            params.push(Value::Text(to_glob(v)));
            Some(format!("{col} GLOB ?"))
        }
        (Matcher::Range { from, to }, _) => {
            let mut parts = Vec::new();
            if let Some(f) = from {
                params.push(Value::Text(f.clone()));
                parts.push(format!("{col} >= ?"));
            }
            if let Some(t) = to {
                params.push(Value::Text(format!("{t}{UPPER_PAD}")));
                parts.push(format!("{col} <= ?"));
            }
            if parts.is_empty() {
                None
            } else {
                Some(format!("({})", parts.join(" AND ")))
            }
        }
        (Matcher::UidList(list), _) => {
            let marks = vec!["?"; list.len()].join(", ");
            params.extend(list.iter().map(|u| Value::Text(u.clone())));
            Some(format!("{col} IN ({marks})"))
        }
        (Matcher::AnyOf(values), _) => {
            // modalities_in_study is a sorted backslash-separated list: match a whole element.
            let parts: Vec<String> = values
                .iter()
                .map(|v| {
                    params.push(Value::Text(format!("*\\{}\\*", to_glob(v))));
                    format!("('\\' || {col} || '\\') GLOB ?")
                })
                .collect();
            Some(format!("({})", parts.join(" OR ")))
        }
    }
}

/// Run a query: the number of matches, or the rows (each the `select` columns as text).
pub fn count(conn: &Connection, q: &Query) -> rusqlite::Result<u64> {
    let (sql, params) = q.to_sql(true);
    conn.query_row(&sql, params_from_iter(params), |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
}

pub fn rows(conn: &Connection, q: &Query) -> rusqlite::Result<Vec<Vec<Option<String>>>> {
    let (sql, params) = q.to_sql(false);
    rows_of(conn, q, &sql, params)
}

/// One page of the rows, in the query's stable order (entity row id): `limit` rows after
/// skipping `offset`. At STUDY level a row is a study, so a page counts studies.
pub fn page(
    conn: &Connection,
    q: &Query,
    offset: u64,
    limit: u64,
) -> rusqlite::Result<Vec<Vec<Option<String>>>> {
    let (mut sql, mut params) = q.to_sql(false);
    sql.push_str(" LIMIT ? OFFSET ?");
    params.push(Value::Integer(limit.min(i64::MAX as u64) as i64));
    params.push(Value::Integer(offset.min(i64::MAX as u64) as i64));
    rows_of(conn, q, &sql, params)
}

/// The stored instances a query selects (its level and `select` are replaced: IMAGE level,
/// the columns of `StoredInstance`), typed as the index holds them, in the query's order.
pub fn stored(conn: &Connection, q: &Query) -> rusqlite::Result<Vec<super::StoredInstance>> {
    use Column::*;
    let q = Query {
        level: Level::Image,
        select: vec![
            StudyInstanceUid,
            SeriesInstanceUid,
            SopInstanceUid,
            SopClassUid,
            StoredTransferSyntax,
            StorageKey,
            StoredSize,
            StoredDigest,
            Rows,
            StoredReadCheck,
        ],
        ..q.clone()
    };
    let (sql, params) = q.to_sql(false);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(params), |r| {
        Ok(super::StoredInstance {
            study_instance_uid: r.get(0)?,
            series_instance_uid: r.get(1)?,
            sop_instance_uid: r.get(2)?,
            sop_class_uid: r.get(3)?,
            transfer_syntax_uid: r.get(4)?,
            storage_key: r.get(5)?,
            size: r.get::<_, i64>(6)? as u64,
            digest: r.get(7)?,
            has_pixels: r.get::<_, Option<i64>>(8)?.is_some(),
            read_check: r.get(9)?,
        })
    })?;
    rows.collect()
}

fn rows_of(
    conn: &Connection,
    q: &Query,
    sql: &str,
    params: Vec<Value>,
) -> rusqlite::Result<Vec<Vec<Option<String>>>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let n = q.select.len();
    let rows = stmt.query_map(params_from_iter(params), |r| {
        (0..n)
            .map(|i| {
                Ok(match r.get::<_, Value>(i)? {
                    Value::Null => None,
                    Value::Integer(v) => Some(v.to_string()),
                    Value::Real(v) => Some(v.to_string()),
                    Value::Text(s) => Some(s),
                    Value::Blob(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                })
            })
            .collect::<rusqlite::Result<Vec<_>>>()
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_matches("Doe^John", "Doe*"));
        assert!(wildcard_matches("Doe^John", "*John"));
        assert!(wildcard_matches("Doe^John", "D?e^J*n"));
        assert!(wildcard_matches("", "*"));
        assert!(!wildcard_matches("Doe", "Doe?"));
        assert!(!wildcard_matches("Doe^John", "doe*"));
        assert!(wildcard_matches("a[b]", "a[b]"));
    }

    #[test]
    fn person_names_by_component_group() {
        let v = "Yamada^Tarou=山田^太郎=やまだ^たろう";
        assert!(pn_matches(v, "Yamada*", false));
        assert!(pn_matches(v, "山田*", false));
        assert!(pn_matches(v, "yamada^tarou", true));
        assert!(!pn_matches(v, "yamada^tarou", false));
        assert!(pn_matches(v, "=山田^太郎", false));
        assert!(!pn_matches(v, "=Yamada^Tarou", false));
        assert!(pn_matches("Müller^Jürgen", "MÜLLER*", true));
    }

    fn q(level: Level, conditions: Vec<Condition>) -> Query {
        Query {
            level,
            conditions,
            select: vec![Column::StudyInstanceUid],
            pn_case_insensitive: true,
            combined_study_datetime: false,
            order: Order::Received,
        }
    }

    #[test]
    fn values_are_parameters_never_sql() {
        let evil = "x' OR 1=1 --";
        let (sql, params) = q(
            Level::Study,
            vec![Condition {
                column: Column::AccessionNumber,
                matcher: Matcher::Single(evil.into()),
            }],
        )
        .to_sql(false);
        assert!(!sql.contains(evil), "{sql}");
        assert_eq!(params, vec![Value::Text(evil.into())]);
    }

    #[test]
    fn ranges_and_lists() {
        let (sql, params) = q(
            Level::Study,
            vec![
                Condition {
                    column: Column::StudyDate,
                    matcher: Matcher::Range {
                        from: None,
                        to: Some("20201231".into()),
                    },
                },
                Condition {
                    column: Column::StudyInstanceUid,
                    matcher: Matcher::UidList(vec!["1.2".into(), "1.3".into()]),
                },
            ],
        )
        .to_sql(false);
        assert!(
            sql.contains("st.study_date <= ?") && sql.contains("st.study_instance_uid IN (?, ?)"),
            "{sql}"
        );
        assert_eq!(params.len(), 3);
    }

    #[test]
    fn patient_conditions_become_a_subquery_with_their_parameters_first() {
        let (sql, params) = q(
            Level::Study,
            vec![
                Condition {
                    column: Column::AccessionNumber,
                    matcher: Matcher::Single("A1".into()),
                },
                Condition {
                    column: Column::PatientId,
                    matcher: Matcher::Single("P1".into()),
                },
            ],
        )
        .to_sql(false);
        assert!(sql.contains("WHERE st.patient_fk IN (SELECT p.id FROM patient p WHERE p.patient_id = ?) AND st.accession_number = ?"), "{sql}");
        assert_eq!(
            params,
            vec![Value::Text("P1".into()), Value::Text("A1".into())]
        );
    }

    #[test]
    fn glob_escapes_brackets() {
        assert_eq!(to_glob("a[1]*"), "a[[]1]*");
    }
}
