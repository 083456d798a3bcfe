#!/usr/bin/perl
# SpamAssassin beside mailgate in scripts/eval-spam: one process, its stock rules compiled
# once, Bayes in DIR (first argument). Reads "ham<TAB>PATH" and "spam<TAB>PATH" lines to
# learn, then "check<TAB>PATH" lines, answering each with
# "PATH<TAB>score<TAB>1|0 (spam)<TAB>seconds<TAB>rules". Network tests are off.
use strict;
use warnings;
use Mail::SpamAssassin;
use Time::HiRes qw(time);

my $home = shift @ARGV or die "usage: eval_spam_sa.pl DIR < commands\n";
my $sa = Mail::SpamAssassin->new({
    local_tests_only   => 1,
    dont_copy_prefs    => 1,
    userprefs_filename => "$home/user_prefs",
    userstate_dir      => $home,
    post_config_text   => "bayes_path $home/bayes\nuse_bayes 1\nbayes_auto_learn 0\n"
        . "bayes_auto_expire 0\nbayes_learn_to_journal 0\n",
});
$sa->init(1);
$| = 1;

sub slurp {
    my ($path) = @_;
    open(my $fh, '<:raw', $path) or die "$path: $!\n";
    local $/;
    my $raw = <$fh>;
    close $fh;
    return $raw;
}

my $learned = 0;
while (my $line = <STDIN>) {
    chomp $line;
    my ($command, $path) = split /\t/, $line, 2;
    my $mail = $sa->parse(slurp($path));
    if ($command eq 'ham' || $command eq 'spam') {
        $sa->learn($mail, undef, $command eq 'spam', 0);
        $learned = 1;
    } else {
        if ($learned) {
            $sa->rebuild_learner_caches();
            $learned = 0;
        }
        my $started = time;
        my $status = $sa->check($mail);
        printf "%s\t%.2f\t%d\t%.4f\t%s\n", $path, $status->get_score(),
            $status->is_spam() ? 1 : 0, time - $started, $status->get_names_of_tests_hit();
        $status->finish;
    }
    $mail->finish;
}
$sa->finish_learner();
