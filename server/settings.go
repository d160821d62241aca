package server

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/taskhub/taskhub/actors"
)

// Every node of a cluster records its shared settings at start and every settingsEvery; a
// record older than settingsAge (a node that left) is not compared.
const (
	settingsEvery = 10 * time.Minute
	settingsAge   = 30 * time.Minute
)

// sharedSettings are the options every node sharing a log must agree on, as flags: each node
// runs lease expiry and stall marking and admits tasks with its own, and the node that settles
// finished tasks compacts them with its own retention.
func sharedSettings(o actors.Options) map[string]string {
	var modeAttempts []string
	for _, m := range slices.Sorted(maps.Keys(o.ModeAttempts)) {
		modeAttempts = append(modeAttempts, fmt.Sprintf("%s=%d", m, o.ModeAttempts[m]))
	}
	return map[string]string{
		"--lease-timeout":             o.LeaseTimeout.String(),
		"--max-attempts":              fmt.Sprint(o.MaxAttempts),
		"--mode-attempts":             strings.Join(modeAttempts, ","),
		"--stall-timeout":             o.StallTimeout.String(),
		"--retention":                 o.Retention.String(),
		"--modes":                     strings.Join(slices.Sorted(slices.Values(o.Modes)), ","),
		"--max-active-tasks-per-user": fmt.Sprint(o.MaxActiveTasksPerUser),
		"--max-modes":                 fmt.Sprint(o.MaxModes),
	}
}

// encodeSettings writes settings as one line, flag=value separated by tabs, in flag order.
func encodeSettings(s map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(s)) {
		if b.Len() > 0 {
			b.WriteByte('\t')
		}
		b.WriteString(k + "=" + s[k])
	}
	return b.String()
}

func decodeSettings(line string) map[string]string {
	s := map[string]string{}
	for _, kv := range strings.Split(line, "\t") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			s[k] = v
		}
	}
	return s
}

// recordSettings records this node's shared settings until ctx ends.
func (s *Server) recordSettings(ctx context.Context) {
	line := encodeSettings(sharedSettings(s.cfg.Options))
	for {
		put, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
		err := s.log.PutSettings(put, line)
		cancel()
		if err != nil && ctx.Err() == nil {
			s.cfg.Logger.Warn("cannot record this node's settings for the others to compare", "err", err)
		}
		if err == nil {
			check, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
			if diffs, err := s.settingsDiffer(check); err == nil && len(diffs) > 0 {
				s.cfg.Logger.Warn("this node's settings differ from other nodes': give every node the same", "differences", strings.Join(diffs, "; "))
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(settingsEvery):
		}
	}
}

// settingsDiffer describes how the other nodes' recorded settings differ from this node's.
func (s *Server) settingsDiffer(ctx context.Context) ([]string, error) {
	all, err := s.log.Settings(ctx, settingsAge)
	if err != nil {
		return nil, err
	}
	mine := sharedSettings(s.cfg.Options)
	var diffs []string
	for _, node := range slices.Sorted(maps.Keys(all)) {
		if node == s.log.Node() {
			continue
		}
		theirs := decodeSettings(all[node])
		for _, flag := range slices.Sorted(maps.Keys(mine)) {
			if v, ok := theirs[flag]; ok && v != mine[flag] {
				diffs = append(diffs, fmt.Sprintf("node %s has %s %q, this node %q", node, flag, v, mine[flag]))
			}
		}
	}
	return diffs, nil
}
