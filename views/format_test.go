package views

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
)

// These cases are the contract the page's script (assets/src/format.ts) follows too.

func TestDuration(t *testing.T) {
	t.Parallel()
	cases := map[time.Duration]string{
		-time.Second:                      "0 s",
		0:                                 "0 s",
		999 * time.Millisecond:            "0 s",
		42 * time.Second:                  "42 s",
		3*time.Minute + 5*time.Second:     "3 min 5 s",
		2*time.Hour + 7*time.Minute + 9e9: "2 h 7 min",
	}
	for d, want := range cases {
		require.Equal(t, want, duration(d), "%v", d)
	}
}

func TestPercent(t *testing.T) {
	t.Parallel()
	for p, want := range map[float64]string{0: "0", 2.5: "3", 40: "40", 99.4: "99", 100: "100"} {
		require.Equal(t, want, percent(p), "%v", p)
	}
}

func TestTiming(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	at := func(ago time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(-ago)) }
	cases := []struct {
		name string
		task *taskhubv1.Task
		want string
	}{
		{"queued", &taskhubv1.Task{State: taskhubv1.TaskState_TASK_STATE_QUEUED, CreatedAt: at(time.Minute), UpdatedAt: at(12 * time.Second)},
			"queued for 12 s"},
		{"running, no estimate at 0%", &taskhubv1.Task{State: taskhubv1.TaskState_TASK_STATE_RUNNING, StartedAt: at(5 * time.Second)},
			"running for 5 s"},
		{"running at 25%", &taskhubv1.Task{State: taskhubv1.TaskState_TASK_STATE_RUNNING, StartedAt: at(10 * time.Second), Progress: 25},
			"running for 10 s · about 30 s left"},
		{"running, stalled", &taskhubv1.Task{State: taskhubv1.TaskState_TASK_STATE_RUNNING, StartedAt: at(5 * time.Minute), Progress: 25,
			Stalled: true, ProgressedAt: at(3 * time.Minute)}, "running for 5 min 0 s · no progress for 3 min 0 s"},
		{"completed", &taskhubv1.Task{State: taskhubv1.TaskState_TASK_STATE_COMPLETED, CreatedAt: at(time.Hour), StartedAt: at(70 * time.Second), FinishedAt: at(0)},
			"took 1 min 10 s"},
		{"failed", &taskhubv1.Task{State: taskhubv1.TaskState_TASK_STATE_FAILED, StartedAt: at(9 * time.Second), FinishedAt: at(4 * time.Second)},
			"failed after 5 s"},
		{"cancelled while queued", &taskhubv1.Task{State: taskhubv1.TaskState_TASK_STATE_CANCELLED, CreatedAt: at(8 * time.Second), FinishedAt: at(0)},
			"cancelled after 8 s"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, timing(tc.task, now))
		})
	}
}

func TestETA(t *testing.T) {
	t.Parallel()
	_, ok := eta(10*time.Second, 0.5)
	require.False(t, ok, "too little progress to go by")
	_, ok = eta(500*time.Millisecond, 50)
	require.False(t, ok, "too little time to go by")
	_, ok = eta(10*time.Second, 100)
	require.False(t, ok, "done")
	left, ok := eta(10*time.Second, 20)
	require.True(t, ok)
	require.Equal(t, 40*time.Second, left)
}

func TestIsImage(t *testing.T) {
	t.Parallel()
	cases := map[string]bool{
		"data:image/svg+xml;base64,PHN2Zz4=":       true,
		"data:image/png;base64,iVBOR":              true,
		"https://example.com/a.PNG":                true,
		"http://example.com/a.webp?size=large":     true,
		"https://example.com/a.png with words":     false,
		`https://example.com/"a.png`:               false,
		"https://example.com/report.pdf":           false,
		"javascript:alert(1)//.png":                false,
		"data:text/html;base64,PHNjcmlwdD4=":       false,
		"1000 users imported":                      false,
		"ftp://example.com/a.png":                  false,
		"https://example.com/image.png?x=<script>": false,
	}
	for r, want := range cases {
		require.Equal(t, want, isImage(r), "%q", r)
	}
}

func TestParseParams(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in   string
		want map[string]string
		err  bool
	}{
		{"", nil, false},
		{" , \n ", nil, false},
		{"steps=40", map[string]string{"steps": "40"}, false},
		{"steps=40, step_ms = 100\nstyle=oil, paint", nil, true},
		{"steps=40, step_ms = 100\nstyle=a=b", map[string]string{"steps": "40", "step_ms": "100", "style": "a=b"}, false},
		{"empty=", map[string]string{"empty": ""}, false},
		{"=value", nil, true},
		{"steps", nil, true},
	}
	for _, tc := range cases {
		got, err := ParseParams(tc.in)
		if tc.err {
			require.Error(t, err, "%q", tc.in)
			require.Contains(t, err.Error(), "key=value")
			continue
		}
		require.NoError(t, err, "%q", tc.in)
		require.Equal(t, tc.want, got, "%q", tc.in)
	}
}

func TestModes(t *testing.T) {
	t.Parallel()
	tasks := []*taskhubv1.Task{{Mode: "render"}, {Mode: "demo"}, {Mode: "import"}, {Mode: "render"}}
	open := &Handler{}
	require.Equal(t, []string{"demo", "import", "render"}, open.modes(tasks), "the default mode and those in use, the default first")
	require.Equal(t, []string{"demo"}, open.modes(nil))
	fixed := &Handler{cfg: Config{Modes: []string{"render", "demo", "zip"}}}
	require.Equal(t, []string{"demo", "render", "zip"}, fixed.modes(tasks), "only the configured modes")
	fixed = &Handler{cfg: Config{Modes: []string{"render"}}}
	require.Equal(t, []string{"render"}, fixed.modes(tasks))
}
