// egresswatch matrix page.
