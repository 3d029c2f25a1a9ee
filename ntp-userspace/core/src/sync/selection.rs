//! Source selection: which sources agree (the intersection of their correctness intervals,
//! Marzullo's algorithm as RFC 5905 uses it), which of those are steady enough to combine, and the
//! system peer.

use super::source::SourceState;

/// One selectable source, as selection sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// The source's offset (its time minus local time), s.
    pub offset: f64,
    /// Its root distance: the half-width of its correctness interval, s.
    pub distance: f64,
    /// Its samples' spread, s.
    pub jitter: f64,
    pub frequency: f64,
    pub stratum: u8,
    pub prefer: bool,
    /// Outvoted only by other trusted sources (`trust`).
    pub trust: bool,
}

/// The outcome: a state for each candidate, and the combined estimate if there is one.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub states: Vec<SourceState>,
    pub combined: Option<Combined>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Combined {
    /// Index of the system peer among the candidates.
    pub peer: usize,
    pub offset: f64,
    pub frequency: f64,
    /// Spread of the combined sources' offsets about the combined offset, s.
    pub jitter: f64,
}

/// Sources whose jitter is this many times the steadiest one's are too variable to combine.
const TOO_VARIABLE: f64 = 10.0;
/// Sources whose distance is this many times the system peer's are not combined.
const COMBINE_LIMIT: f64 = 3.0;

/// Selects among `candidates`; `None` entries are not selectable and come out `Unusable`.
/// `required[i]`: candidate `i` was configured with `require`; if any was, the clock is updated
/// only while one of them is a truechimer.
pub fn select(candidates: &[Option<Candidate>], required: &[bool]) -> Selection {
    let mut states = vec![SourceState::Unusable; candidates.len()];
    let usable: Vec<(usize, Candidate)> =
        candidates.iter().enumerate().filter_map(|(i, c)| c.map(|c| (i, c))).collect();
    if usable.is_empty() {
        return Selection { states, combined: None };
    }
    // Trusted sources decide among themselves where true time is; the others must agree.
    let trusted: Vec<(usize, Candidate)> =
        usable.iter().copied().filter(|(_, c)| c.trust).collect();
    let interval =
        if trusted.is_empty() { majority_interval(&usable) } else { majority_interval(&trusted) };
    let Some((low, high)) = interval else {
        // No majority agrees: nothing can be trusted.
        for (i, _) in &usable {
            states[*i] = SourceState::Falseticker;
        }
        return Selection { states, combined: None };
    };
    let mut truechimers: Vec<(usize, Candidate)> = Vec::new();
    for (i, c) in &usable {
        if c.offset - c.distance <= high && c.offset + c.distance >= low {
            truechimers.push((*i, *c));
        } else {
            states[*i] = SourceState::Falseticker;
        }
    }
    let steadiest =
        truechimers.iter().map(|(_, c)| c.jitter).fold(f64::INFINITY, f64::min).max(1e-9);
    let mut survivors: Vec<(usize, Candidate)> = Vec::new();
    for (i, c) in truechimers {
        if c.jitter <= TOO_VARIABLE * steadiest {
            survivors.push((i, c));
        } else {
            states[i] = SourceState::TooVariable;
        }
    }
    // The system peer: a preferred source if any, then the lowest stratum, then the least
    // distance.
    let peer = survivors
        .iter()
        .min_by(|(_, a), (_, b)| {
            b.prefer
                .cmp(&a.prefer)
                .then(a.stratum.cmp(&b.stratum))
                .then(a.distance.total_cmp(&b.distance))
        })
        .copied();
    let Some((peer_index, peer)) = peer else {
        return Selection { states, combined: None };
    };
    let requirement_met = !required.contains(&true)
        || survivors.iter().any(|(i, _)| required.get(*i).copied().unwrap_or(false));
    // Combine the peer with the survivors not much worse than it, weighted by 1/distance.
    let mut weight_sum = 0.0;
    let (mut offset, mut frequency) = (0.0, 0.0);
    let mut combined = Vec::new();
    for (i, c) in &survivors {
        if *i == peer_index || c.distance <= COMBINE_LIMIT * peer.distance {
            let weight = 1.0 / c.distance.max(1e-9);
            weight_sum += weight;
            offset += weight * c.offset;
            frequency += weight * c.frequency;
            combined.push((*i, *c));
            states[*i] =
                if *i == peer_index { SourceState::Selected } else { SourceState::Combined };
        } else {
            states[*i] = SourceState::NotCombined;
        }
    }
    offset /= weight_sum;
    frequency /= weight_sum;
    let jitter = (combined.iter().map(|(_, c)| (c.offset - offset).powi(2)).sum::<f64>()
        / combined.len() as f64)
        .sqrt();
    let combined =
        requirement_met.then_some(Combined { peer: peer_index, offset, frequency, jitter });
    Selection { states, combined }
}

/// The intersection of the most correctness intervals (Marzullo's algorithm as RFC 5905 uses
/// it): allowing f falsetickers for f = 0, 1, ... until a majority overlaps.
fn majority_interval(candidates: &[(usize, Candidate)]) -> Option<(f64, f64)> {
    let n = candidates.len();
    let mut edges: Vec<(f64, i32)> = Vec::with_capacity(2 * n);
    for (_, c) in candidates {
        edges.push((c.offset - c.distance, -1));
        edges.push((c.offset + c.distance, 1));
    }
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for allowed_false in 0..n.div_ceil(2).max(1) {
        let needed = (n - allowed_false) as i32;
        let (mut count, mut low) = (0, None);
        for &(edge, kind) in &edges {
            count -= kind;
            if count >= needed {
                low = Some(edge);
                break;
            }
        }
        let (mut count, mut high) = (0, None);
        for &(edge, kind) in edges.iter().rev() {
            count += kind;
            if count >= needed {
                high = Some(edge);
                break;
            }
        }
        if let (Some(low), Some(high)) = (low, high)
            && low <= high
        {
            return Some((low, high));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(offset: f64, distance: f64) -> Option<Candidate> {
        Some(Candidate {
            offset,
            distance,
            jitter: 1e-5,
            frequency: 0.0,
            stratum: 1,
            prefer: false,
            trust: false,
        })
    }

    #[test]
    fn one_falseticker_among_three_is_rejected() {
        let selection =
            select(&[candidate(0.0, 1e-3), candidate(50e-3, 1e-3), candidate(0.2e-3, 1e-3)], &[]);
        assert_eq!(selection.states[1], SourceState::Falseticker);
        let combined = selection.combined.unwrap();
        assert!(combined.offset.abs() < 0.2e-3, "{}", combined.offset);
        assert!(matches!(selection.states[0], SourceState::Selected | SourceState::Combined));
        assert!(matches!(selection.states[2], SourceState::Selected | SourceState::Combined));
    }

    #[test]
    fn two_agreeing_sources_are_combined_and_the_closer_leads() {
        let selection = select(&[candidate(1e-4, 2e-3), candidate(2e-4, 1e-3), None], &[]);
        assert_eq!(
            selection.states,
            [SourceState::Combined, SourceState::Selected, SourceState::Unusable]
        );
        let offset = selection.combined.unwrap().offset;
        assert!((offset - (1e-4 * 500.0 + 2e-4 * 1000.0) / 1500.0).abs() < 1e-12);
    }

    #[test]
    fn two_disagreeing_sources_give_nothing() {
        let selection = select(&[candidate(0.0, 1e-3), candidate(1.0, 1e-3)], &[]);
        assert_eq!(selection.combined, None);
        assert_eq!(selection.states, [SourceState::Falseticker, SourceState::Falseticker]);
    }

    #[test]
    fn a_jittery_source_is_not_combined() {
        let mut jittery = candidate(0.0, 1e-3).unwrap();
        jittery.jitter = 1e-2;
        let selection = select(&[candidate(0.0, 1e-3), Some(jittery)], &[]);
        assert_eq!(selection.states[1], SourceState::TooVariable);
    }

    #[test]
    fn a_preferred_source_leads() {
        let mut preferred = candidate(1e-4, 2e-3).unwrap();
        preferred.prefer = true;
        let selection = select(&[candidate(0.0, 1e-3), Some(preferred)], &[]);
        assert_eq!(selection.states[1], SourceState::Selected);
    }

    #[test]
    fn a_trusted_source_outvotes_a_majority() {
        let mut trusted = candidate(0.0, 1e-3).unwrap();
        trusted.trust = true;
        let selection =
            select(&[Some(trusted), candidate(0.1, 1e-3), candidate(0.1005, 1e-3)], &[]);
        assert_eq!(
            selection.states,
            [SourceState::Selected, SourceState::Falseticker, SourceState::Falseticker]
        );
    }

    #[test]
    fn without_a_required_source_nothing_is_combined() {
        let sources = [candidate(0.0, 1e-3), candidate(50e-3, 1e-3), candidate(0.2e-3, 1e-3)];
        // The required source is the falseticker: states are given, the clock is not updated.
        let selection = select(&sources, &[false, true, false]);
        assert_eq!(selection.states[1], SourceState::Falseticker);
        assert_eq!(selection.combined, None);
        // Required and a truechimer: combined as usual.
        assert!(select(&sources, &[true, false, false]).combined.is_some());
    }
}
