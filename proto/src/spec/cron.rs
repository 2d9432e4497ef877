//! Cron schedules as Debian's cron (Vixie cron 3.0) reads them; see
//! [`cron_schedule`]. Written here rather than taken from a crate: croner
//! and the `cron` crate accept schedules Debian's cron refuses (ARCHITECTURE.md).

/// The `@` forms Debian's cron (Vixie cron 3.0) knows; they are case-sensitive.
const CRON_KEYWORDS: [&str; 8] = [
    "@reboot",
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// One of the five fields of a cron schedule: its name, bounds and names.
struct CronField {
    name: &'static str,
    low: u32,
    high: u32,
    /// Three-letter names for `low..`, matched without regard to case.
    names: &'static [&'static str],
}

const CRON_FIELDS: [CronField; 5] = [
    CronField {
        name: "minute",
        low: 0,
        high: 59,
        names: &[],
    },
    CronField {
        name: "hour",
        low: 0,
        high: 23,
        names: &[],
    },
    CronField {
        name: "day-of-month",
        low: 1,
        high: 31,
        names: &[],
    },
    CronField {
        name: "month",
        low: 1,
        high: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    },
    CronField {
        name: "day-of-week",
        low: 0,
        high: 7,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"],
    },
];

impl CronField {
    fn allowed(&self) -> String {
        match self.names {
            [] => format!("{}-{}", self.low, self.high),
            // Day-of-week's names end with Sunday again (7): name the range sun-sat.
            [first, .., last] if first == last => {
                format!(
                    "{}-{} or {first}-{}",
                    self.low,
                    self.high,
                    self.names[self.names.len() - 2]
                )
            }
            [first, .., last] => format!("{}-{} or {first}-{last}", self.low, self.high),
            [one] => format!("{}-{} or {one}", self.low, self.high),
        }
    }

    /// One value: a decimal number or (month, day-of-week) a name.
    fn value(&self, v: &str) -> Result<u32, String> {
        let n = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            // Leading zeros are fine ("00"); too many digits is out of range.
            match v.trim_start_matches('0') {
                "" => 0,
                digits => digits.parse::<u32>().unwrap_or(u32::MAX),
            }
        } else if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            self.low + i as u32
        } else {
            return Err(format!(
                "{} {v:?} is not a number{} (allowed: {})",
                self.name,
                if self.names.is_empty() {
                    ""
                } else {
                    " or a three-letter name"
                },
                self.allowed()
            ));
        };
        if n < self.low || n > self.high {
            return Err(format!("{} {v} out of range {}", self.name, self.allowed()));
        }
        Ok(n)
    }

    /// One list item: `*`, a value or a range `a-b`, each optionally with a `/step`.
    fn item(&self, item: &str) -> Result<(), String> {
        let (base, step) = match item.split_once('/') {
            Some((b, s)) => (b, Some(s)),
            None => (item, None),
        };
        let ranged = if base == "*" {
            true
        } else if let Some((a, b)) = base.split_once('-') {
            let (lo, hi) = (self.value(a)?, self.value(b)?);
            if lo > hi {
                return Err(format!(
                    "{} range {base} is reversed, and cron would never run it; write it as {a}-{},{}-{b}",
                    self.name, self.high, self.low
                ));
            }
            true
        } else {
            self.value(base)?;
            false
        };
        if let Some(step) = step {
            if !ranged {
                return Err(format!(
                    "{} {item:?}: a step needs a range or '*' before it, as in {base}-{}/{step} or */{step}",
                    self.name, self.high
                ));
            }
            let span = self.high - self.low + 1;
            match step.parse::<u32>() {
                Ok(n) if (1..=span).contains(&n) && step.bytes().all(|b| b.is_ascii_digit()) => {}
                _ => {
                    return Err(format!(
                        "{} step {step:?} in {item:?} is not a number from 1 to {span}",
                        self.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// A comma-separated list of items.
    fn check(&self, field: &str) -> Result<(), String> {
        for item in field.split(',') {
            if item.is_empty() {
                return Err(format!("{} {field:?} has an empty list item", self.name));
            }
            self.item(item)?;
        }
        Ok(())
    }
}

/// A cron schedule as Debian's cron (Vixie cron) reads it: one of the `@`
/// keywords, or five fields separated by spaces or tabs: minute 0-59, hour
/// 0-23, day-of-month 1-31, month 1-12 or jan-dec, day-of-week 0-7 (0 and 7
/// are Sunday) or sun-sat; each a list of `*`, values and ranges `a-b`, with
/// an optional `/step` after `*` or a range. Stricter than cron where cron
/// takes a schedule it then never runs or reads oddly: a reversed range
/// (`5-1`), `*-5`, `1-2-3`, a step on a single value, a step of 0.
pub fn cron_schedule(s: &str) -> Result<(), String> {
    let fail =
        |why: String| -> Result<(), String> { Err(format!("invalid cron schedule {s:?}: {why}")) };
    if s.chars().any(|c| c.is_control() && c != '\t') {
        return fail("it must be one line, without control characters other than tab".into());
    }
    if s.starts_with('@') {
        if CRON_KEYWORDS.contains(&s) {
            return Ok(());
        }
        return fail(format!(
            "unknown keyword; allowed are {}",
            CRON_KEYWORDS.join(", ")
        ));
    }
    let fields: Vec<&str> = s.split([' ', '\t']).filter(|f| !f.is_empty()).collect();
    if fields.len() != 5 {
        return fail(format!(
            "expected five fields (minute hour day-of-month month day-of-week) or one of {}, found {} fields",
            CRON_KEYWORDS.join(", "),
            fields.len()
        ));
    }
    for (field, spec) in fields.iter().zip(&CRON_FIELDS) {
        if let Some(c) = field
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '*' | ',' | '/' | '-')))
        {
            return fail(format!(
                "{} {field:?}: {c:?} is not allowed (allowed: digits, names, '*', ',', '-' and '/')",
                spec.name
            ));
        }
        if let Err(why) = spec.check(field) {
            return fail(why);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every schedule here was also given to Debian 12's `crontab -n`
    /// (cron 3.0pl1-162): the accepted ones it accepts, the refused ones it
    /// refuses, or (marked "cron takes it") takes and never runs or reads oddly.
    #[test]
    fn cron_schedules_follow_vixie_cron() {
        for ok in [
            "* * * * *",
            "*/5 * * * *",
            "0 3 * * *",
            "00 01 * * *",
            "*/5,1-3 * * * *",
            "5-10/2 * * * *",
            "1-1 * * * *",
            "*/60 * * * *",
            "0 0 31 2 *",
            "0 0 * jan-mar *",
            "0 0 * JAN,Dec *",
            "0 0 * jan-3 *",
            "0 0 * * mon-fri",
            "0 0 * * MON,wed",
            "0 0 * * mon-fri/2",
            "0 0 * * sun-sat",
            "0 0 * * 0-7",
            "0 0 * * 7",
            "0 0 * * */2",
            "0\t0\t*\t*\t*",
            " 0  0 * * * ",
            "@reboot",
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        ] {
            assert_eq!(cron_schedule(ok), Ok(()), "{ok:?}");
        }
        let table = [
            ("61 * * * *", "minute 61 out of range 0-59"),
            ("-1 * * * *", "minute \"\" is not a number (allowed: 0-59)"),
            ("0 24 * * *", "hour 24 out of range 0-23"),
            ("0 0 0 * *", "day-of-month 0 out of range 1-31"),
            ("0 0 32 * *", "day-of-month 32 out of range 1-31"),
            ("0 0 * 0 *", "month 0 out of range 1-12 or jan-dec"),
            ("0 0 * 13 *", "month 13 out of range 1-12 or jan-dec"),
            (
                "0 0 * june *",
                "month \"june\" is not a number or a three-letter name (allowed: 1-12 or jan-dec)",
            ),
            ("0 0 * * 8", "day-of-week 8 out of range 0-7 or sun-sat"),
            (
                "0 0 * * mo",
                "day-of-week \"mo\" is not a number or a three-letter name (allowed: 0-7 or sun-sat)",
            ),
            (
                "0 0 * * sunday",
                "day-of-week \"sunday\" is not a number or a three-letter name (allowed: 0-7 or sun-sat)",
            ),
            (
                "mon * * * *",
                "minute \"mon\" is not a number (allowed: 0-59)",
            ),
            (
                "0x1 * * * *",
                "minute \"0x1\" is not a number (allowed: 0-59)",
            ),
            (
                "99999999999 * * * *",
                "minute 99999999999 out of range 0-59",
            ),
            (
                "0 0 L * *",
                "day-of-month \"L\" is not a number (allowed: 1-31)",
            ),
            (
                "0 0 ? * *",
                "day-of-month \"?\": '?' is not allowed (allowed: digits, names, '*', ',', '-' and '/')",
            ),
            (
                "0 0 * * thu#2",
                "day-of-week \"thu#2\": '#' is not allowed (allowed: digits, names, '*', ',', '-' and '/')",
            ),
            (
                "+1 * * * *",
                "minute \"+1\": '+' is not allowed (allowed: digits, names, '*', ',', '-' and '/')",
            ),
            (
                "*/0 * * * *",
                "minute step \"0\" in \"*/0\" is not a number from 1 to 60",
            ),
            (
                "0 0 1-31/0 * *",
                "day-of-month step \"0\" in \"1-31/0\" is not a number from 1 to 31",
            ),
            (
                "*/ * * * *",
                "minute step \"\" in \"*/\" is not a number from 1 to 60",
            ),
            (
                "5/10 * * * *",
                "minute \"5/10\": a step needs a range or '*' before it, as in 5-59/10 or */10",
            ),
            (
                "0 0 * jan/2 *",
                "month \"jan/2\": a step needs a range or '*' before it, as in jan-12/2 or */2",
            ),
            ("1,,2 * * * *", "minute \"1,,2\" has an empty list item"),
            (",1 * * * *", "minute \",1\" has an empty list item"),
            ("1- * * * *", "minute \"\" is not a number (allowed: 0-59)"),
            (
                "* * * *",
                "expected five fields (minute hour day-of-month month day-of-week) or one of @reboot, @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, found 4 fields",
            ),
            (
                "* * * * * *",
                "expected five fields (minute hour day-of-month month day-of-week) or one of @reboot, @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, found 6 fields",
            ),
            (
                "@DAILY",
                "unknown keyword; allowed are @reboot, @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly",
            ),
            (
                "@every 5m",
                "unknown keyword; allowed are @reboot, @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly",
            ),
            (
                "* * * * *\n* * * * * root rm -rf /",
                "it must be one line, without control characters other than tab",
            ),
            (
                "@daily\r",
                "it must be one line, without control characters other than tab",
            ),
            // cron takes these:
            (
                "10-5 * * * *",
                "minute range 10-5 is reversed, and cron would never run it; write it as 10-59,0-5",
            ),
            (
                "0 0 * * fri-mon",
                "day-of-week range fri-mon is reversed, and cron would never run it; write it as fri-7,0-mon",
            ),
            (
                "*-5 * * * *",
                "minute \"*\" is not a number (allowed: 0-59)",
            ),
            (
                "1-2-3 * * * *",
                "minute \"2-3\" is not a number (allowed: 0-59)",
            ),
            (
                "0-59/100 * * * *",
                "minute step \"100\" in \"0-59/100\" is not a number from 1 to 60",
            ),
            (
                "*/5/2 * * * *",
                "minute step \"5/2\" in \"*/5/2\" is not a number from 1 to 60",
            ),
            (
                "0 0 ** * *",
                "day-of-month \"**\" is not a number (allowed: 1-31)",
            ),
        ];
        for (bad, why) in table {
            assert_eq!(
                cron_schedule(bad),
                Err(format!("invalid cron schedule {bad:?}: {why}")),
                "{bad:?}"
            );
        }
    }
}
