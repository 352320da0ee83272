//! Maintenance windows: when a rollout may start work on a new node.
//!
//! Written as operators say them: `Mon-Fri 22:00-06:00 Europe/Berlin`,
//! `Sat,Sun 00:00-24:00 UTC`, `daily 01:00-05:00`. A window that ends before
//! it starts crosses midnight and belongs to the day it starts on. Outside
//! every window no new node starts; nodes already under way finish.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;

#[derive(Debug, Clone)]
pub struct MaintenanceWindow {
    /// Monday first.
    days: [bool; 7],
    start: Time,
    /// `None` means midnight at the end of the day (24:00).
    end: Option<Time>,
    zone: TimeZone,
    text: String,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_index(name: &str) -> Option<usize> {
    let name = name.to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .position(|d| name.starts_with(d) && name.len() >= 3)
}

fn weekday_index(day: Weekday) -> usize {
    day.to_monday_zero_offset() as usize
}

impl FromStr for MaintenanceWindow {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!(
                "invalid maintenance window {text:?}: {why}; write e.g. \"Mon-Fri 22:00-06:00 Europe/Berlin\""
            )
        };
        let parts: Vec<&str> = text.split_whitespace().collect();
        let (days_text, hours_text, zone_name) = match parts.as_slice() {
            [days, hours] => (*days, *hours, "UTC"),
            [days, hours, zone] => (*days, *hours, *zone),
            _ => return Err(bad("expected DAYS HH:MM-HH:MM [TIME_ZONE]")),
        };
        let mut days = [false; 7];
        if matches!(days_text.to_ascii_lowercase().as_str(), "daily" | "*") {
            days = [true; 7];
        } else {
            for item in days_text.split(',') {
                match item.split_once('-') {
                    Some((from, to)) => {
                        let (from, to) = (
                            day_index(from).ok_or_else(|| bad("unknown day"))?,
                            day_index(to).ok_or_else(|| bad("unknown day"))?,
                        );
                        let mut day = from;
                        loop {
                            days[day] = true;
                            if day == to {
                                break;
                            }
                            day = (day + 1) % 7;
                        }
                    }
                    None => days[day_index(item).ok_or_else(|| bad("unknown day"))?] = true,
                }
            }
        }
        let (start, end) = hours_text
            .split_once('-')
            .ok_or_else(|| bad("expected HH:MM-HH:MM"))?;
        let start: Time = start.parse().map_err(|_| bad("bad start time"))?;
        let end = match end {
            "24:00" => None,
            end => Some(end.parse::<Time>().map_err(|_| bad("bad end time"))?),
        };
        let zone = TimeZone::get(zone_name)
            .map_err(|_| bad(&format!("unknown time zone {zone_name:?}")))?;
        Ok(MaintenanceWindow {
            days,
            start,
            end,
            zone,
            text: text.to_string(),
        })
    }
}

impl fmt::Display for MaintenanceWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl MaintenanceWindow {
    /// Whether `now` falls inside the window.
    pub fn contains(&self, now: Timestamp) -> bool {
        let local = now.to_zoned_datetime(self.zone.clone());
        let (today, time) = (weekday_index(local.weekday()), local.time());
        let yesterday = (today + 6) % 7;
        match self.end {
            None => self.days[today] && time >= self.start,
            Some(end) if end > self.start => self.days[today] && time >= self.start && time < end,
            Some(end) if end == self.start => self.days[today],
            // Crosses midnight: evening of a listed day, or early morning after one.
            Some(end) => {
                (self.days[today] && time >= self.start) || (self.days[yesterday] && time < end)
            }
        }
    }

    /// The next moment at or after `now` inside the window, within a week.
    pub fn next_open(&self, now: Timestamp) -> Option<Timestamp> {
        if self.contains(now) {
            return Some(now);
        }
        let local = now.to_zoned_datetime(self.zone.clone());
        (0..8).find_map(|offset| {
            let date = local
                .date()
                .checked_add(jiff::Span::new().days(offset))
                .ok()?;
            let opens = date
                .to_datetime(self.start)
                .to_zoned_datetime(self.zone.clone())
                .ok()?
                .timestamp();
            (opens > now && self.contains(opens)).then_some(opens)
        })
    }
}

/// Whether any of `windows` is open at `now`; no windows means always.
pub fn open(windows: &[MaintenanceWindow], now: Timestamp) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.contains(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_window_across_midnight_belongs_to_its_start_day() {
        let window: MaintenanceWindow = "Mon-Fri 22:00-06:00 Europe/Berlin".parse().unwrap();
        // 2026-11-23 is a Monday; Berlin is UTC+1 in November.
        assert!(window.contains(at("2026-11-23T21:30:00Z"))); // Mon 22:30
        assert!(window.contains(at("2026-11-24T04:00:00Z"))); // Tue 05:00, after Mon
        assert!(!window.contains(at("2026-11-24T06:00:00Z"))); // Tue 07:00
        assert!(!window.contains(at("2026-11-23T20:00:00Z"))); // Mon 21:00
        assert!(window.contains(at("2026-11-28T04:00:00Z"))); // Sat 05:00, after Fri
        assert!(!window.contains(at("2026-11-28T21:30:00Z"))); // Sat 22:30
        assert!(!window.contains(at("2026-11-23T04:00:00Z"))); // Mon 05:00, after Sun
    }

    #[test]
    fn whole_days_and_daily_windows() {
        let weekend: MaintenanceWindow = "Sat,Sun 00:00-24:00 UTC".parse().unwrap();
        assert!(weekend.contains(at("2026-11-28T12:00:00Z")));
        assert!(!weekend.contains(at("2026-11-27T23:59:00Z")));
        let nightly: MaintenanceWindow = "daily 01:00-05:00".parse().unwrap();
        assert!(nightly.contains(at("2026-11-25T03:00:00Z")));
        assert!(!nightly.contains(at("2026-11-25T05:00:00Z")));
    }

    #[test]
    fn next_open_finds_the_coming_start() {
        let window: MaintenanceWindow = "Mon-Fri 22:00-06:00 Europe/Berlin".parse().unwrap();
        assert_eq!(
            window.next_open(at("2026-11-23T12:00:00Z")),
            Some(at("2026-11-23T21:00:00Z"))
        );
        // Friday noon UTC: tonight is still a weekday start.
        assert_eq!(
            window.next_open(at("2026-11-27T12:00:00Z")),
            Some(at("2026-11-27T21:00:00Z"))
        );
        // Saturday noon: next is Monday night.
        assert_eq!(
            window.next_open(at("2026-11-28T12:00:00Z")),
            Some(at("2026-11-30T21:00:00Z"))
        );
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        for (bad, why) in [
            ("Funday 01:00-02:00", "unknown day"),
            ("Mon 1-2", "start time"),
            ("Mon 01:00-02:00 Mars/Olympus", "Mars/Olympus"),
            ("Mon", "expected DAYS"),
        ] {
            let err = bad.parse::<MaintenanceWindow>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(open(&[], at("2026-11-23T12:00:00Z")));
    }
}
