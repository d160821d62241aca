package eventlog

// StallFollowers stops the consumers of l's followers without telling them: what a pull
// consumer that asks the server for nothing more looks like to them (see followStall).
func StallFollowers(l *Log) {
	l.followers.Range(func(k, _ any) bool {
		f := k.(*follower)
		f.mu.Lock()
		f.cc.Stop()
		f.mu.Unlock()
		return true
	})
}
