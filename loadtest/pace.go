package loadtest

import (
	"context"
	"time"
)

// pace calls start(i) for i = 0, 1, … n−1, call i due at begin + i/rate,
// and returns how many calls it made: n, or fewer when ctx ended first. When
// the loop falls behind (timer granularity, a slow start), it catches up
// without sleeping rather than stretching the schedule. start runs on the
// caller's goroutine and should not block.
func pace(ctx context.Context, begin time.Time, n int, rate float64, start func(i int)) int {
	interval := time.Duration(float64(time.Second) / rate)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for i := range n {
		if wait := time.Until(begin.Add(time.Duration(i) * interval)); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return i
			case <-timer.C:
			}
		} else if ctx.Err() != nil {
			return i
		}
		start(i)
	}
	return n
}
